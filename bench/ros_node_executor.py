"""The guidance node's executor, A/B: rclpy's MultiThreadedExecutor vs ``SubmitOnceExecutor``.

Runs ``emu-guide bench --over-ros`` episodes (the shipped model, the sim bridge's camera at 20 Hz)
with the node spinning either executor, alternating rounds, and reports per variant the model's
step time inside the node (p50 / p95, the Guide feedback's ``latency_ms``), frame-in -> first
feedback (p50) and how often the node's main thread went round the executor's wait loop, with its
CPU time. A ``sitecustomize`` in a temporary folder (on the node processes' PYTHONPATH) swaps the
executor class and counts ``_spin_once_impl`` calls; the product code is unchanged.

    python bench/ros_node_executor.py                       # 2 rounds x 2 TableClear episodes per variant
    python bench/ros_node_executor.py --rounds 3 --episodes 3

Prints a table, writes runs/bench/ros_node_executor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

SITECUSTOMIZE = '''
import json, os, sys, threading, time
if os.environ.get("EMU_EXECUTOR_AB"):
    try:
        import rclpy.executors as ex
        import emu_ros.node_common as nc
    except ImportError:  # not a ROS process of this tree
        pass
    else:
        if os.environ["EMU_EXECUTOR_AB"] == "rclpy":
            nc.SubmitOnceExecutor = ex.MultiThreadedExecutor
        cls = nc.SubmitOnceExecutor
        stats = {"passes": 0, "cpu_s": 0.0, "executor": cls.__name__}
        inner = cls._spin_once_impl
        def counted(self, *a, **k):
            t = time.thread_time()
            inner(self, *a, **k)
            stats["passes"] += 1
            stats["cpu_s"] += time.thread_time() - t
        cls._spin_once_impl = counted
        t0 = time.monotonic()
        def report():
            while True:
                time.sleep(1.0)
                print("EXECUTOR " + json.dumps({**stats, "wall_s": time.monotonic() - t0}), flush=True)
        threading.Thread(target=report, daemon=True).start()
'''


def main() -> None:
    import numpy as np

    import emu_ros.bench_over_ros as over_ros
    from emu_guide.paths import artifacts_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="table_clear")
    p.add_argument("--episodes", type=int, default=2, help="episodes per round and variant")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    runs: dict[str, list[dict]] = {"rclpy": [], "submit_once": []}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(SITECUSTOMIZE)
        graph_env = over_ros.graph_env

        def with_hook(*args, **kwargs):  # the node processes import the hook at start-up
            env = graph_env(*args, **kwargs)
            env["PYTHONPATH"] = f"{env.get('PYTHONPATH', '')}:{tmp}".lstrip(":")
            return env

        over_ros.graph_env = with_hook
        for r in range(a.rounds):
            for variant in runs:
                os.environ["EMU_EXECUTOR_AB"] = variant
                out = Path(tmp) / f"{variant}_{r}"
                report = over_ros.run_over_ros([a.task], a.episodes, ["torch"], ["auto"], out, progress=False)
                log = next((out / "over_ros_logs").glob("node_*.log")).read_text().splitlines()
                spin = json.loads(next(ln for ln in reversed(log) if ln.startswith("EXECUTOR "))[len("EXECUTOR "):])
                steps = [s for e in report["episodes"] for s in e["steps"]]
                runs[variant].append({"round": r, "success": report["summaries"][0]["success_rate"],
                                      "step_ms": [s["latency_ms"]["total"] for s in steps],
                                      "first_feedback_ms": [over_ros.first_feedback_ms(e["steps"][0]) for e in report["episodes"] if e["steps"]],
                                      "loadavg": os.getloadavg()[0], **spin})  # fmt: skip
                print(f"round {r} {variant}: step p50 {np.percentile(runs[variant][-1]['step_ms'], 50):.0f} ms,"
                      f" wait-loop passes {spin['passes']} in {spin['wall_s']:.0f} s ({spin['cpu_s']:.2f} CPU-s),"
                      f" load average {runs[variant][-1]['loadavg']:.1f}", flush=True)
    rows = [("executor", "rounds", "step ms p50 / p95", "frame-in -> 1st feedback p50", "wait-loop passes/s", "main-thread CPU %")]
    summary = {}
    for variant, rs in runs.items():
        step = [v for x in rs for v in x["step_ms"]]
        first = [v for x in rs for v in x["first_feedback_ms"] if v is not None]
        wall = sum(x["wall_s"] for x in rs)
        summary[variant] = {"step_ms_p50": float(np.percentile(step, 50)), "step_ms_p95": float(np.percentile(step, 95)),
                            "first_feedback_ms_p50": float(np.percentile(first, 50)) if first else None,
                            "passes_per_s": sum(x["passes"] for x in rs) / wall,
                            "main_thread_cpu_pct": 100 * sum(x["cpu_s"] for x in rs) / wall, "runs": rs}  # fmt: skip
        s = summary[variant]
        rows.append((variant, str(len(rs)), f"{s['step_ms_p50']:.0f} / {s['step_ms_p95']:.0f}",
                     "-" if s["first_feedback_ms_p50"] is None else f"{s['first_feedback_ms_p50']:.0f} ms",
                     f"{s['passes_per_s']:.0f}", f"{s['main_thread_cpu_pct']:.1f}"))  # fmt: skip
    out = artifacts_root() / "bench" / "ros_node_executor.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": a.task, "episodes": a.episodes, "rounds": a.rounds, **summary}, indent=1))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
