"""Closed loop over ROS vs in process: the same held-out seeds, model, budget and loop, side by side.

A thin wrapper: ``emu-guide bench --over-ros`` (emu_ros/bench_over_ros.py: the guidance node, the
sim bridge and a Guide client as processes over real DDS) and ``emu-guide bench`` (in process) on
the same tasks and seeds, one worker each, then one table: success both ways, the model's step
time (p50, the detector's share left out) both ways, and over ROS the frame-in -> first feedback p50.

    python bench/ros_closed_loop.py --episodes 20            # needs `bash scripts/ros_venv.sh`
    python bench/ros_closed_loop.py --tasks table_clear --episodes 5
    python bench/ros_closed_loop.py --mode over-ros --tasks fold_cloth    # parts in parallel, then:
    python bench/ros_closed_loop.py --mode compare
    python bench/ros_closed_loop.py --episodes 10 --seed-offset 10   # seeds 11-20: a second part, merged by compare

Writes runs/bench/ros_closed_loop/{over_ros,in_process}/<task>/bench.json and
runs/bench/ros_closed_loop/comparison.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emu_guide.cli import main as emu_guide
from emu_ros.bench_over_ros import first_feedback_ms


def main() -> None:
    from emu_guide.paths import artifacts_root
    from planner.envs import TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--episodes", type=int, default=20, help="held-out seeds per task")
    p.add_argument("--backend", default="torch", help="torch (the shipped model, default) or oracle")
    p.add_argument("--out", type=Path, default=None, help="folder (default runs/bench/ros_closed_loop)")
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="wall-clock limit per episode, both ways (s): on a starved host raise it, or slow episodes fail")
    p.add_argument("--seed-offset", type=int, default=0, help="first held-out seed = HELDOUT_SEEDS[offset] (parts of a run)")
    p.add_argument("--camera-hz", type=float, default=20.0, help="over ROS: the sim bridge's camera rate")
    p.add_argument("--mode", default="both", choices=("both", "over-ros", "in-process", "compare"),
                   help="run both benches (default), one of them, or only compare the bench.json files in --out"
                        " (runs of parts, e.g. one task per process, fill the same folder)")
    a = p.parse_args()
    out = a.out or artifacts_root() / "bench" / "ros_closed_loop"
    modes = {"both": ("over_ros", "in_process"), "over-ros": ("over_ros",), "in-process": ("in_process",), "compare": ()}
    for task in a.tasks:  # task by task, both ways (one folder each: parts may run as separate processes)
        for mode in modes[a.mode]:
            args = ["--tasks", task, "--episodes", str(a.episodes), "--backend", a.backend, "--workers", "1", "--sheets", "none",
                    "--time-limit", str(a.time_limit), "--seed-offset", str(a.seed_offset),
                    "--out", str(out / mode / (task if not a.seed_offset else f"{task}_from{a.seed_offset}")),
                    *(["--over-ros", "--camera-hz", str(a.camera_hz)] if mode == "over_ros" else [])]  # fmt: skip
            code = emu_guide(["bench", *args])
            if code:
                raise SystemExit(code)
    reports = {mode: _merged(out / mode) for mode in ("over_ros", "in_process")}
    rows = [("task", "seeds", "over ROS", "in process", "diff (points)", "same outcome", "step ms p50 ROS / proc",
             "frame-in -> 1st feedback p50")]  # fmt: skip
    comparison = []
    for task in dict.fromkeys(e["task"] for e in reports["over_ros"]["episodes"]):
        ros, proc = _by_seed(reports["over_ros"], task), {e["seed"]: e for e in _by_seed(reports["in_process"], task)}
        pairs = [(e, proc[e["seed"]]) for e in ros if e["seed"] in proc]  # the seeds both ways ran
        if not pairs:
            continue
        first = [first_feedback_ms(e["steps"][0]) for e, _ in pairs if e["steps"]]
        c = {"task": task, "seeds": [e["seed"] for e, _ in pairs],
             "over_ros_success": sum(e["success"] for e, _ in pairs) / len(pairs),
             "in_process_success": sum(f["success"] for _, f in pairs) / len(pairs),
             "same_outcome_seeds": sum(e["success"] == f["success"] for e, f in pairs),
             "step_ms_p50_over_ros": _model_ms_p50([e for e, _ in pairs]),
             "step_ms_p50_in_process": _model_ms_p50([f for _, f in pairs]),
             "frame_to_first_feedback_ms_p50": _p50([v for v in first if v is not None]),
             "mirror_disagreements": sum(e.get("mirror_disagreements", 0) for e, _ in pairs)}  # fmt: skip
        comparison.append(c)
        rows.append((task, str(len(pairs)), f"{c['over_ros_success']:.0%}", f"{c['in_process_success']:.0%}",
                     f"{100 * (c['over_ros_success'] - c['in_process_success']):+.0f}", f"{c['same_outcome_seeds']}/{len(pairs)}",
                     f"{c['step_ms_p50_over_ros']:.0f} / {c['step_ms_p50_in_process']:.0f}",
                     f"{c['frame_to_first_feedback_ms_p50']:.0f} ms"))  # fmt: skip
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"wrote {out / 'comparison.json'}")


def _model_ms_p50(episodes: list[dict]) -> float:
    """The model's own step time, p50: in process a step's total also holds the detector's run
    ("detect"), which over ROS happens in the sim bridge, before the frame reaches the node."""
    return _p50([s["latency_ms"]["total"] - s["latency_ms"].get("detect", 0.0) for e in episodes
                 for s in e["steps"] if "total" in s["latency_ms"]])  # fmt: skip


def _p50(values: list[float]) -> float:
    import numpy as np

    return float(np.percentile(values, 50)) if values else float("nan")


def _merged(folder: Path) -> dict:
    """Summaries and episodes of every ``<task>/bench.json`` under ``folder``."""
    parts = [json.loads(f.read_text()) for f in sorted(folder.glob("*/bench.json"))]
    return {"summaries": [s for r in parts for s in r["summaries"]], "episodes": [e for r in parts for e in r["episodes"]]}


def _by_seed(report: dict, task: str) -> list[dict]:
    return sorted((e for e in report["episodes"] if e["task"] == task), key=lambda e: e["seed"])


if __name__ == "__main__":
    main()
