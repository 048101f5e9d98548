"""The subgoal row's floor: a "subgoal image" that is just the frame before the step.

    python bench/subgoal_copy_baseline.py [--tasks table_clear fold_cloth sort_blocks] [--episodes 5]
                                          [--resolution 96] [--out runs/bench/subgoal_copy_baseline.json]

Held-out seeds only. The scripted expert runs each episode (no injected mistakes); for every plan
step that reached its goal, the frame before it is scored as the prediction of the frame after it
with the closed loop's metric (``planner.metrics.subgoal_position_error``: mean centroid error of
the coloured objects, a lost one counting as the image diagonal). A model whose subgoal images
score above this has lost more of the scene than it moved. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["table_clear", "fold_cloth", "sort_blocks"])
    ap.add_argument("--episodes", type=int, default=5, help="held-out episodes per task")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "subgoal_copy_baseline.json"))
    args = ap.parse_args(argv)

    from bench.verify_frames import segment_cases
    from planner.metrics import subgoal_position_error
    from sim_envs.seeds import seeds_for

    table = {}
    for task in args.tasks:
        errors = []
        for seed in seeds_for("heldout", args.episodes):
            ep = segment_cases(task, seed, mistake_rate=0.0, resolution=args.resolution)
            for c in ep["cases"]:
                if c["happened"]:
                    px, _ = subgoal_position_error(ep["frames"][c["before"]]["image"], ep["frames"][c["after"]]["image"])
                    if px is not None:
                        errors.append(px)
        table[task] = {"steps": len(errors), "mean_px": float(np.mean(errors)) if errors else None,
                       "median_px": float(np.median(errors)) if errors else None}
    print(f"copy-the-frame subgoal, {args.episodes} held-out episodes per task, {args.resolution} px frames")
    print(f"{'task':<12}{'steps':>6}{'mean px':>9}{'median px':>11}")
    for task, r in table.items():
        mean = "-" if r["mean_px"] is None else f"{r['mean_px']:.1f}"
        median = "-" if r["median_px"] is None else f"{r['median_px']:.1f}"
        print(f"{task:<12}{r['steps']:>6}{mean:>9}{median:>11}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", "bench/subgoal_copy_baseline.py", *(argv or sys.argv[1:])]),
                               "args": vars(args), "table": table}, indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
