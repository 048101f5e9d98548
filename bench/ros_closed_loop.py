"""Closed loop over ROS vs in process: the same held-out seeds, the same model, the same loop.

Over ROS, the guidance node (default backend: torch with the shipped model, grounded by the sim
bridge's ObjectsInView) and the sim bridge run as .ros_venv processes and talk over Fast DDS; a
probe client sends one continuous Guide goal per seed and reads the result and the bridge's
StepResults. The node stays up for a task; the bridge is restarted per seed (its env is reset with
that seed). In process, `planner.runner.run_episode` runs the same seeds with the same model and
grounded decoding, its executor being the sim's skills as the bridge's. Success is the simulator's
word in both (the last StepResult's task_done over ROS, ``task_success()`` in process).

Then frame-in -> first feedback latency: one-shot goals on the node, frames from the probe.

    python bench/ros_closed_loop.py --episodes 20             # needs `bash scripts/ros_venv.sh`
    python bench/ros_closed_loop.py --tasks table_clear --episodes 5 --latency-trials 5

Prints a table, writes runs/bench/ros_closed_loop.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "emu_ros"))  # the process and probe helpers of the ROS test tier

from ros_tier import VENV, RosProcess, node_args, random_domain_id, ros_env, run_probe  # noqa: E402

TASK_IDS = {"table_clear": "sim_envs/TableClear-v0", "fold_cloth": "sim_envs/FoldCloth-v0",
            "sort_blocks": "sim_envs/SortBlocks-v0"}  # fmt: skip


def over_ros(python: Path, tmp: Path, task: str, seeds: list[int], node_params: dict, max_steps: int) -> list[dict]:
    import gymnasium as gym

    import sim_envs  # noqa: F401

    env = ros_env(random_domain_id(), tmp)
    probe_env = gym.make(TASK_IDS[task])  # the names the bridge's executor accepts, as a robot's configuration
    probe_env.reset(seed=seeds[0])
    u = probe_env.unwrapped
    node_params = {**node_params, "object_names": ",".join(u.name_vocabulary()), "target_names": ",".join(u.target_names())}
    probe_env.close()
    node = RosProcess(node_args(python, "emu_ros.guidance_node", node_params), env, tmp / f"node_{task}.log")
    episodes = []
    try:
        node.wait_for_log("loaded", timeout=120)
        for seed in seeds:
            sim = gym.make(TASK_IDS[task])
            sim.reset(seed=seed)
            instruction = sim.unwrapped.instruction  # the bridge's env draws the same one for this seed
            sim.close()
            bridge = RosProcess(node_args(python, "emu_ros.sim_bridge_node", {"env_id": TASK_IDS[task], "seed": seed,
                                                                              "camera_rate_hz": 20.0}),
                                env, tmp / f"bridge_{task}_{seed}.log")  # fmt: skip
            t0 = time.monotonic()
            try:
                bridge.wait_for_log("sim bridge ready", timeout=60)
                out = run_probe(python, "closed_loop", {"instruction": instruction, "max_steps": max_steps, "timeout": 300},
                                env, timeout=360)  # fmt: skip
            except Exception as exc:  # a probe or bridge that failed is a failed episode, with its reason
                out = {"result": {"status": "error", "error": f"{type(exc).__name__}: {exc}", "steps": []}, "step_results": []}
            finally:
                bridge.stop()
            results = out.get("step_results", [])
            episodes.append({
                "task": task, "seed": seed, "status": out["result"]["status"], "error": out["result"].get("error", ""),
                "success": bool(results and results[-1]["task_done"]), "steps": len(out["result"].get("steps", [])),
                "wall_s": time.monotonic() - t0,
            })  # fmt: skip
            print(f"  ros  {task} seed {seed}: {episodes[-1]['status']:9s} success={episodes[-1]['success']}"
                  f" steps={episodes[-1]['steps']} {episodes[-1]['wall_s']:.1f} s", flush=True)
    finally:
        node.stop()
    return episodes


def in_process(task: str, seeds: list[int], model_path: str | None, max_steps: int) -> list[dict]:
    from model_runtime.backends.base import DecodeOptions
    from planner.envs import make_backend, make_env
    from planner.monitor import MonitorConfig
    from planner.runner import RunnerConfig, run_episode

    backend = make_backend("torch", None, model_path=model_path)
    env = make_env(task, resolution=backend.image_size[0])
    config = RunnerConfig(decode=DecodeOptions(), grounded_decoding=True, keep_images=False,
                          monitor=MonitorConfig(max_planning_calls=max_steps, time_limit_s=300.0))
    episodes = []
    for seed in seeds:
        r = run_episode(env, backend, seed, config)
        episodes.append({"task": task, "seed": seed, "status": r.status, "success": r.success, "steps": len(r.steps),
                         "wall_s": r.wall_s})  # fmt: skip
        print(f"  proc {task} seed {seed}: success={r.success} steps={len(r.steps)} {r.wall_s:.1f} s", flush=True)
    env.close()
    backend.close()
    return episodes


def latency(python: Path, tmp: Path, node_params: dict, trials: int) -> list[float]:
    """Frame-in -> first feedback of one-shot goals (frames streamed by the probe at 20 Hz)."""
    env = ros_env(random_domain_id(), tmp)
    node = RosProcess(node_args(python, "emu_ros.guidance_node", node_params), env, tmp / "node_latency.log")
    out: list[float] = []
    try:
        node.wait_for_log("loaded", timeout=120)
        for _ in range(trials):
            r = run_probe(python, "oneshot", {"instruction": "clear the table", "max_steps": 1, "discovery_s": 0.5}, env)
            out += r["frame_in_to_feedback_s"]
    finally:
        node.stop()
    return out


def _fixed_places() -> str:
    """The fixed places of the sim tasks, as config/sim_guidance.yaml lists them for the gate."""
    import yaml

    params = yaml.safe_load((ROOT / "config" / "sim_guidance.yaml").read_text())
    node = next(v["ros__parameters"] for v in params.values() if "gate_vocabulary" in v.get("ros__parameters", {}))
    return str(node["gate_vocabulary"])


def main() -> None:
    from emu_guide.paths import artifacts_root
    from sim_envs.seeds import seeds_for

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASK_IDS), choices=list(TASK_IDS))
    p.add_argument("--episodes", type=int, default=20, help="held-out seeds per task")
    p.add_argument("--model-path", default="", help="model directory ('' = the shipped default model)")
    p.add_argument("--max-steps", type=int, default=40, help="planning calls per goal (the node's max_steps)")
    p.add_argument("--latency-trials", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default runs/bench/ros_closed_loop.json)")
    a = p.parse_args()
    python = VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} missing: run `bash scripts/ros_venv.sh` first")
    # The bridge's StepResult.task_done is the simulator's task check, as the in-process checker; the
    # sim bridge's detector reports objects, so the safety gate is told the fixed places (receptacles,
    # cloth parts) as a robot's configuration would (config/sim_guidance.yaml does the same).
    node_params = {"backend": "torch", "model_path": a.model_path, "replan_rate_hz": 20.0, "stats_rate_hz": 2.0,
                   "executor_knows_task_done": True, "gate_vocabulary": _fixed_places()}
    seeds = seeds_for("heldout", a.episodes, 0)
    report: dict = {"config": {"tasks": a.tasks, "episodes": a.episodes, "node": node_params, "max_steps": a.max_steps,
                               "seeds": seeds}, "tasks": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            ros = over_ros(python, Path(tmp), task, seeds, node_params, a.max_steps)
            proc = in_process(task, seeds, a.model_path or None, a.max_steps)
            report["tasks"][task] = {
                "ros_success": float(np.mean([e["success"] for e in ros])),
                "in_process_success": float(np.mean([e["success"] for e in proc])),
                "ros_episodes": ros, "in_process_episodes": proc,
            }
        lat = latency(python, Path(tmp), node_params, a.latency_trials) if a.latency_trials else []
    report["frame_in_to_first_feedback_ms"] = {"p50": float(np.percentile(lat, 50)) * 1e3 if lat else None,
                                               "max": max(lat) * 1e3 if lat else None, "n": len(lat)}  # fmt: skip
    out = a.out or artifacts_root() / "bench" / "ros_closed_loop.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    rows = [("task", "episodes", "over ROS", "in process", "difference (points)")]
    for task, r in report["tasks"].items():
        rows.append((task, str(a.episodes), f"{r['ros_success']:.0%}", f"{r['in_process_success']:.0%}",
                     f"{100 * (r['ros_success'] - r['in_process_success']):+.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    f = report["frame_in_to_first_feedback_ms"]
    if f["n"]:
        print(f"frame-in -> first feedback (one-shot, torch): p50 {f['p50']:.1f} ms, max {f['max']:.1f} ms, n={f['n']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
