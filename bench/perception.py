"""Perception benchmark: does a model say which objects are on the table, where, and what it holds?

    python bench/perception.py [--model-path model_runtime/default_model] [--tasks table_clear sort_blocks fold_cloth]
                               [--episodes 10] [--frames-per-episode 8] [--mistake-rate 0.2] [--out runs/bench/perception.json]

Held-out seeds only (``sim_envs.seeds``, "heldout" split). Each episode runs the scripted expert
(with injected mistakes, as the recordings do) and takes the frames at its step boundaries (where
the guidance loop asks the model for the next step: frame 0, then each frame where a (sub)step was
just completed), at most ``--frames-per-episode`` of them, evenly spread. At each such frame the
model perceives it (below; the current instruction, the done steps as history) and its perception
is compared with the ground truth of that frame
(``finetune_embodied.record.scene_perception``: what ``emu-guide record`` stores as the target).

Metrics (micro-averaged over frames):

- ``object_f1``: objects matched by name, colour and kind both right (a multiset match);
  precision/recall alongside;
- ``colour_f1``: the same on colours alone (a diagnostic: is the model reading at all?);
- ``cell_acc``: among matched objects, the fraction whose cell (left/middle/right x back/front)
  is right (duplicates of a name are paired cell-first);
- ``holding_acc``: the held object (or nothing) right;
- ``exact``: the whole perception right (every object, cell and the held object);
- ``parse_fail``: answers whose perception did not parse (the backend's error; counted as empty).

A model directory with a scene perceiver (``perception/``, model_runtime/scene_perceiver.py) is
asked through ``perceive`` (what its ``next_step`` plans from); otherwise a "perceive"-format LM
answers one ``next_step`` and its decoded perception is scored. A model with neither has no
perception: the script says so and scores it as empty (F1 0). ``ms p50``: the perceiver's time
per frame (for an LM, its perception text's decoding time).
Prints a table and writes JSON (``--out``). The ground truth reads simulator state; the model
sees only the frame, the instruction and its done steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def boundary_frames(task: str, seed: int, mistake_rate: float, resolution: int, limit: int) -> tuple[str, list[dict]]:
    """(instruction, [{"image", "history", "truth"}]) at the expert's step boundaries of one episode."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the envs)
    from finetune_embodied.record import scene_perception, task_env_ids
    from sim_envs.expert import ExpertError, ScriptedExpert

    env = gym.make(task_env_ids()[task], resolution=resolution, max_episode_steps=2000)
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    expert = ScriptedExpert(env, mistake_rate=mistake_rate, seed=seed)
    h, w = obs["image"].shape[:2]
    frames = [{"image": obs["image"], "history": [], "truth": scene_perception(u, w, h)}]
    done: list[str] = []
    label = None
    try:
        while not expert.done:
            action, _, text = expert.next_action()
            if label is not None and text != label:  # the previous (sub)step just ended: a boundary
                done.append(label)  # (the env is still in the state of the last observation)
                frames.append({"image": obs["image"], "history": list(done), "truth": scene_perception(u, w, h)})
            label = text
            obs, _, _, truncated, _ = env.step(action)
            if truncated:  # not on success: the last step runs to its end, as the loop executes it
                break
    except ExpertError:
        pass
    instruction = u.instruction
    env.close()
    if len(frames) > limit:
        keep = np.unique(np.linspace(0, len(frames) - 1, limit).round().astype(int))
        frames = [frames[i] for i in keep]
    return instruction, frames


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default=str(ROOT / "model_runtime" / "default_model"))
    ap.add_argument("--tasks", nargs="+", default=["table_clear", "sort_blocks", "fold_cloth"])
    ap.add_argument("--episodes", type=int, default=10, help="held-out episodes per task")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed = HELDOUT_SEEDS[offset]")
    ap.add_argument("--frames-per-episode", type=int, default=8)
    ap.add_argument("--mistake-rate", type=float, default=0.2)
    ap.add_argument("--decode", default="dida", choices=["ar", "dida"],
                    help="subgoal decoding; the perception is greedy text before it, the same either way, so DiDA"
                         " (forced on next-token weights) only makes the run faster")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "perception.json"))
    args = ap.parse_args(argv)

    import torch

    from emu_guide.types import Frame, PlanStep
    from model_runtime.backends.base import BackendError, DecodeOptions, load_backend
    from model_runtime.scene_perceiver import score_perception, summarise_scores
    from sim_envs.seeds import seeds_for

    torch.set_num_threads(args.threads)
    backend = load_backend("torch", model_path=args.model_path)
    fmt = getattr(backend, "answer_format", "step")
    own = backend.perceiver is not None  # a scene perceiver: what next_step plans from, asked directly
    if fmt != "perceive" and not own:
        print(f"{args.model_path}: answer format {fmt!r} and no scene perceiver: no perception; every frame scores as empty")
    res = backend.image_size[0]
    seeds = seeds_for("heldout", args.episodes, args.seed_offset)
    rows, per_frame = {}, []
    t0 = time.perf_counter()
    for task in args.tasks:
        counts, fails = [], 0
        for seed in seeds:
            instruction, frames = boundary_frames(task, seed, args.mistake_rate, res, args.frames_per_episode)
            for k, f in enumerate(frames):
                pred, error, ms = None, "", None
                history = [PlanStep(index=i, text=t) for i, t in enumerate(f["history"])]
                if own:
                    seen = backend.perceive(Frame(image=f["image"]), instruction, history)
                    pred, ms = seen.perception, seen.timings_ms["perceiver"]
                elif fmt == "perceive":
                    try:
                        step = backend.next_step(Frame(image=f["image"]), instruction, history,
                                                 DecodeOptions(mode=args.decode, force_dida=True))
                        pred, ms = step.perception, step.timings_ms.get("text")
                    except BackendError as exc:
                        fails += 1
                        error = str(exc)
                s = score_perception(pred, f["truth"])
                counts.append(s)
                per_frame.append({"task": task, "seed": seed, "frame": k, "truth": f["truth"], "pred": pred,
                                  "error": error, "ms": ms, **s})
        times = [p["ms"] for p in per_frame if p["task"] == task and p["ms"] is not None]
        rows[task] = {**summarise_scores(counts), "parse_fail": fails,
                      "perceive_ms_p50": float(np.median(times)) if times else None}
    rows["all"] = {**summarise_scores(per_frame), "parse_fail": sum(r["parse_fail"] for r in rows.values())}
    wall = time.perf_counter() - t0
    print(f"perception on held-out frames: {args.model_path} (answer format {fmt!r}), {args.episodes} episodes per task,"
          f" <= {args.frames_per_episode} boundary frames each, {wall:.0f} s")
    head = (f"{'task':<12}{'frames':>7}{'F1':>7}{'prec':>7}{'recall':>7}{'colourF1':>9}{'cell':>7}{'holding':>8}"
            f"{'exact':>7}{'fail':>6}{'ms p50':>8}")
    print(head)
    for task, r in rows.items():
        print(f"{task:<12}{r['frames']:>7}{r['object_f1']:>7.3f}{r['object_precision']:>7.3f}{r['object_recall']:>7.3f}{r['colour_f1']:>9.3f}"
              f"{r['cell_acc']:>7.3f}{r['holding_acc']:>8.3f}{r['exact']:>7.3f}{r['parse_fail']:>6}"
              f"{'-' if r.get('perceive_ms_p50') is None else format(r['perceive_ms_p50'], '.1f'):>8}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in per_frame:  # JSON-friendly ground truth (pixels kept for inspection)
        p["truth"] = {"objects": p["truth"]["objects"], "holding": p["truth"]["holding"]}
    out.write_text(json.dumps({"model_path": args.model_path, "answer_format": fmt, "args": vars(args),
                               "wall_s": wall, "rows": rows, "frames": per_frame}, indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
