"""Guidance node under load: camera frames at 60 Hz for 60 s (some invalid) while a continuous Guide
goal plans, all over real rclpy / Fast DDS (the .ros_venv from scripts/ros_venv.sh).

    PYTHONPATH=. .venv/bin/python bench/ros_node_load.py [--hz 60] [--seconds 60] [--size 240 320] [--bad-every 10]

Measures: node latency frame-in -> first feedback (one-shot goals) and, under load, frame-in ->
feedback of the step planned from it; how far behind the newest frame each step was planned
(backlog); node memory (RSS) over time; frames received / rejected / dropped. Prints a table,
writes runs/bench/ros_node_load.json and runs/bench/ros_node_load.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "emu_ros"))  # the probe and process helpers of the ROS test tier

from ros_tier import RosProcess, node_args, random_domain_id, ros_env, run_probe  # noqa: E402

# The gate's goal-rate limit is off here: this load measures the frame path at replan_rate_hz (the
# gate's hold is tested in tests/emu_ros/test_safety_gate.py). With it on at 5 Hz the node planned
# only 2.2 steps/s in this scenario (3.9 with it off; the same loop and gate in process: 4.6):
# an interaction not yet explained (session 6 closing note).
NODE_PARAMS = {"backend": "oracle", "sim_env_id": "sim_envs/TableClear-v0", "sim_seed": 1000000, "decode_mode": "oracle",
               "wait_for_step_result": False, "replan_rate_hz": 5.0, "max_steps": 1000, "stats_rate_hz": 2.0,
               "plan_images": "last", "gate_max_goal_rate_hz": 0.0}  # fmt: skip
# The product's default: the torch backend with the shipped model (`--backend torch`).
TORCH_NODE_PARAMS = {"backend": "torch", "wait_for_step_result": False, "replan_rate_hz": 5.0, "max_steps": 1000,
                     "stats_rate_hz": 2.0, "plan_images": "last", "gate_max_goal_rate_hz": 0.0}  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_load(python: Path, tmp: Path, hz: float = 60.0, seconds: float = 60.0, size: tuple[int, int] = (240, 320),
             bad_every: int = 10, oneshot_trials: int = 3, node_params: dict | None = None) -> dict:  # fmt: skip
    """Start a node, run the load (the frame counters cover it alone), then one-shot latency trials."""
    node_params = node_params or NODE_PARAMS
    env = ros_env(random_domain_id(), tmp)
    node = RosProcess(node_args(python, "emu_ros.guidance_node", node_params), env, tmp / "load_node.log")
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    try:
        node.wait_for_log(f"backend '{node_params['backend']}' loaded", timeout=120)
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                rss.append((time.monotonic() - t0, node.rss_mb()))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        args = {"instruction": "clear the table", "hz": hz, "seconds": seconds, "height": size[0], "width": size[1],
                "bad_every": bad_every}  # fmt: skip
        load = run_probe(python, "load", args, env, timeout=seconds + 120)
        stop.set()
        sampler.join()
        alive = node.proc.poll() is None
        latencies = []  # then frame in -> first feedback of one-shot goals on the quiet node
        for _ in range(oneshot_trials):
            out = run_probe(python, "oneshot", {"instruction": "clear the table", "max_steps": 1, "discovery_s": 0.5}, env)
            latencies += out["frame_in_to_feedback_s"]
    finally:
        stop.set()
        node.stop()
    stats = load["stats"] or {}
    times = np.array([t for t, _ in rss])
    mem = np.array([m for _, m in rss])
    early = mem[(times > 5) & (times < 15)] if len(mem) else mem
    late = mem[times > times.max() - 10] if len(mem) else mem
    sent_good, sent_bad = load["counts"].get("good", 0), load["counts"].get("bad", 0)
    return {
        "config": {"hz": hz, "seconds": seconds, "size": list(size), "bad_every": bad_every, "node": node_params},
        "oneshot_frame_in_to_first_feedback_ms": {"p50": 1e3 * _pct(latencies, 50), "max": 1e3 * max(latencies, default=float("nan")),
                                                  "n": len(latencies)},  # fmt: skip
        "load_frame_in_to_feedback_ms": {"p50": 1e3 * _pct(load["frame_in_to_feedback_s"], 50),
                                         "p95": 1e3 * _pct(load["frame_in_to_feedback_s"], 95)},  # fmt: skip
        "frame_age_at_planning_ms": {"p50": 1e3 * _pct(load["frame_age_s"], 50), "p90": 1e3 * _pct(load["frame_age_s"], 90),
                                     "p95": 1e3 * _pct(load["frame_age_s"], 95),
                                     "max": 1e3 * max(load["frame_age_s"], default=float("nan"))},  # fmt: skip
        "steps": load["steps"],
        "steps_per_s": load["steps"] / seconds,
        "frames_sent_valid": sent_good,
        "frames_sent_invalid": sent_bad,
        "frames_received": stats.get("received"),
        "frames_rejected": stats.get("rejected"),
        "rejected_by_reason": stats.get("rejected_by_reason"),
        "frames_dropped_unused": stats.get("dropped"),
        "rss_mb": {"start": float(mem[0]) if len(mem) else None, "early_median": float(np.median(early)) if len(early) else None,
                   "late_median": float(np.median(late)) if len(late) else None, "peak": float(mem.max()) if len(mem) else None},  # fmt: skip
        "rss_series": rss,
        "stats_series": load["stats_series"],
        "node_alive_after": alive,
        "final_status": load["final_status"],
    }


def _table(r: dict) -> str:
    rows = [
        ("one-shot frame-in -> first feedback p50 / max (ms)", f"{r['oneshot_frame_in_to_first_feedback_ms']['p50']:.1f} / {r['oneshot_frame_in_to_first_feedback_ms']['max']:.1f}"),
        ("load: frame-in -> feedback p50 / p95 (ms)", f"{r['load_frame_in_to_feedback_ms']['p50']:.1f} / {r['load_frame_in_to_feedback_ms']['p95']:.1f}"),
        ("load: frame age at planning p50 / p95 / max (ms)", "{p50:.1f} / {p95:.1f} / {max:.1f}".format(**r["frame_age_at_planning_ms"])),
        ("steps planned (steps/s)", f"{r['steps']} ({r['steps_per_s']:.2f})"),
        ("frames sent valid / invalid", f"{r['frames_sent_valid']} / {r['frames_sent_invalid']}"),
        ("frames received / rejected / dropped unused", f"{r['frames_received']} / {r['frames_rejected']} / {r['frames_dropped_unused']}"),
        ("node RSS start / early / late / peak (MB)", "{start:.0f} / {early_median:.0f} / {late_median:.0f} / {peak:.0f}".format(**r["rss_mb"])),
        ("node alive, goal status at cancel", f"{r['node_alive_after']}, {r['final_status']}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    t = [x for x, _ in r["rss_series"]]
    a.plot(t, [m for _, m in r["rss_series"]])
    a.set(xlabel="s", ylabel="node RSS (MB)", title=f"memory, {r['config']['hz']:.0f} Hz frames {r['config']['size']}")
    s = np.array(r["stats_series"] or [[0, 0, 0]])
    b.plot(s[:, 0], label="received")
    b.plot(s[:, 1], label="rejected")
    b.plot(s[:, 2], label="dropped unused")
    b.set(xlabel="stats message (2 Hz)", ylabel="frames", title="frame counters")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    import tempfile

    from ros_tier import VENV

    from emu_guide.paths import artifacts_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hz", type=float, default=60.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    p.add_argument("--bad-every", type=int, default=10)
    p.add_argument("--gate-rate-hz", type=float, default=0.0,
                   help="the safety gate's goal-rate limit (gate_max_goal_rate_hz; the node's default is 5, off here)")
    p.add_argument("--backend", default="oracle", choices=("oracle", "torch"),
                   help="oracle (planning cost near zero: the frame path alone) or torch (the shipped model)")
    a = p.parse_args()
    python = VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} missing: run `bash scripts/ros_venv.sh` first")
    with tempfile.TemporaryDirectory() as tmp:
        params = {**(TORCH_NODE_PARAMS if a.backend == "torch" else NODE_PARAMS), "gate_max_goal_rate_hz": a.gate_rate_hz}
        result = run_load(python, Path(tmp), a.hz, a.seconds, tuple(a.size), a.bad_every, node_params=params)
    out = artifacts_root() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    name = "ros_node_load" if a.backend == "oracle" else f"ros_node_load_{a.backend}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    _plot(result, out / f"{name}.png")
    print(_table(result))
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")


if __name__ == "__main__":
    main()
