"""Keyframe labelling benchmark: how well does ``finetune_embodied.labelling`` find the step ends of
labelled recordings when it is not shown their labels?

    python bench/label_keyframes.py [--tasks table_clear fold_cloth sort_blocks] [--episodes 5]
                                    [--mistake-rate 0.0 0.2] [--tolerance 2] [--out runs/bench/label_keyframes.json]
    python bench/label_keyframes.py --dataset PATH [--camera NAME]     # any labelled LeRobot dataset
    PYTHONPATH=. python bench/label_keyframes.py --env examples.metaworld.metaworld_guidance:make_pick_place ...

Sims: ``emu-guide record``'s expert (TRAIN seeds, the first ``--episodes`` of each task) writes a
v3 dataset whose every frame carries its step text (plan steps and, with a mistake rate, the
mistakes and recoveries); the true step ends are where the text changes and the episode's last
frame. ``--env``: guidance-protocol environments recorded by ``emu-guide record --env`` (their
``ground_truth_plan()`` through ``execute_skill``, each step's sentence on its frames; the
Meta-World example's steps are phases of its scripted experts), one dataset per env. The labeller then runs on the dataset with each setting (``label.cues``, ``label.events``), and also as on
a dataset whose state columns have no names (every column a joint: motion pauses only). A detected
end counts when within ``--tolerance`` frames of a true one (one-to-one). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # name -> (label config overrides, hide the state column names)
    "default (gripper > motion > image)": ({}, False),
    "gripper, releases only": ({"events": ["release"]}, False),
    "motion pauses only": ({"cues": ["motion"]}, False),
    "image change only": ({"cues": ["image"]}, False),
    "state unnamed (default cues)": ({}, True),
}


def record_sim(task: str, episodes: int, mistake_rate: float, out: Path, seed_offset: int = 0) -> Path:
    from finetune_embodied.record import RecordConfig, record

    cfg = RecordConfig(out=str(out), tasks=(task,), episodes_per_task=episodes, mistake_rate=mistake_rate,
                       resolution=64, keep_shards=False, seed_offset=seed_offset)
    record(cfg, progress=False)
    return out


def record_protocol_env(target: str, episodes: int, out: Path, seed_offset: int = 0) -> Path:
    from finetune_embodied.record_env import EnvRecordConfig, record_env

    record_env(EnvRecordConfig(out=str(out), envs=(target,), episodes=episodes, seed_offset=seed_offset,
                               resolution=64), progress=False)
    return out


def score(path: Path, camera: str, tolerance: int) -> list[dict]:
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.labelling import label_dataset
    from finetune_embodied.train.config import LabelConfig
    from finetune_embodied.train.stages.tokenizer_stage import camera_key

    rows = []
    for name, (overrides, unnamed) in SETTINGS.items():
        reader = open_dataset(path)
        if unnamed:
            reader.state_names = lambda: []  # as a dataset that names no state column
        key = camera_key(reader.camera_keys, camera, str(path)) if reader.camera_keys else None
        t0 = time.perf_counter()
        rep = label_dataset(reader, LabelConfig(**overrides), key, only_missing=False, tolerance=tolerance)
        rows.append({"setting": name, "cues_used": dict(rep.cues), "columns": rep.columns,
                     "episodes": rep.scored, "step_ends": rep.actual, "detected": rep.detected,
                     "precision": rep.precision, "recall": rep.recall, "seconds": time.perf_counter() - t0})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["table_clear", "fold_cloth", "sort_blocks"])
    p.add_argument("--episodes", type=int, default=5, help="episodes per task")
    p.add_argument("--seed-offset", type=int, default=0, help="first TRAIN seed used (TRAIN_SEEDS[offset])")
    p.add_argument("--env", nargs="*", default=[], metavar="MODULE:CALLABLE",
                   help="guidance-protocol envs to record and score (instead of the sims)")
    p.add_argument("--mistake-rate", nargs="+", type=float, default=[0.0, 0.2])
    p.add_argument("--tolerance", type=int, default=2)
    p.add_argument("--dataset", nargs="*", default=[], help="labelled LeRobot datasets to score instead of the sims")
    p.add_argument("--camera", default="")
    p.add_argument("--work", default="runs/bench/label_keyframes_data", help="where the sim recordings go")
    p.add_argument("--out", default="runs/bench/label_keyframes.json")
    args = p.parse_args(argv)

    results = []
    if args.dataset:
        for d in args.dataset:
            for r in score(Path(d), args.camera, args.tolerance):
                results.append({"source": d, **r})
    elif args.env:
        for target in args.env:
            name = target.rsplit(":", 1)[-1].removeprefix("make_")
            path = Path(args.work) / f"env-{name}-{args.episodes}-o{args.seed_offset}"
            t0 = time.perf_counter()
            if not (path / "meta/info.json").is_file():
                record_protocol_env(target, args.episodes, path, args.seed_offset)
            print(f"[{target}] dataset {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
            for r in score(path, args.camera, args.tolerance):
                results.append({"source": name, **r})
    else:
        for task in args.tasks:
            for rate in args.mistake_rate:
                path = Path(args.work) / f"{task}-mr{rate:g}-{args.episodes}" / f"o{args.seed_offset}"
                t0 = time.perf_counter()
                if not (path / "meta/info.json").is_file():
                    record_sim(task, args.episodes, rate, path, args.seed_offset)
                print(f"[{task} mistake rate {rate:g}] dataset {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
                for r in score(path, args.camera, args.tolerance):
                    results.append({"source": f"{task} mr={rate:g}", **r})

    head = f"{'source':22s} {'setting':36s} {'eps':>4s} {'ends':>5s} {'found':>5s} {'prec':>5s} {'recall':>6s}  cues used"
    print(head)
    print("-" * len(head))
    for r in results:
        cues = ", ".join(f"{k} {v}" for k, v in sorted(r["cues_used"].items()))
        print(f"{r['source']:22s} {r['setting']:36s} {r['episodes']:4d} {r['step_ends']:5d} {r['detected']:5d} "
              f"{r['precision']:5.2f} {r['recall']:6.2f}  {cues}")
    for setting in SETTINGS:
        rs = [r for r in results if r["setting"] == setting]
        tp = sum(r["precision"] * r["detected"] for r in rs)
        det, act = sum(r["detected"] for r in rs), sum(r["step_ends"] for r in rs)
        if det and act:
            print(f"{'ALL':22s} {setting:36s} {'':4s} {act:5d} {det:5d} {tp / det:5.2f} {tp / act:6.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "tolerance_frames": args.tolerance, "rows": results}, indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
