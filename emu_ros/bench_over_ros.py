"""``emu-guide bench --over-ros``: the closed-loop benchmark with every episode run over ROS 2.

The same held-out seeds, budget, table and ``bench.json`` as the in-process bench
(``planner.bench``), but each episode is the product as it ships: the guidance node
(``emu_ros.guidance_node``: the one step loop behind a Guide action, grounded by ObjectsInView,
the safety gate on), the sim bridge (``emu_ros.sim_bridge_node``: camera at 20 Hz, the scripted
skills as the executor, the simulator's checker in its StepResults) and a Guide client
(``emu_ros.guide_client``) as separate processes over real DDS, in a graph of their own (random
domain id, localhost discovery). A model backend's node stays up for a task (its model loads and
warms up once); the bridge restarts per seed (its env is reset with that seed), and the client sets
the node's per-episode parameters first (the names that episode's skills accept; the oracle's seed).

Scoring: success is the simulator's word, the last StepResult's ``task_done``, as ``task_success()``
in process. Per-step evaluation (text and goal against the ground-truth plan, steps completed) comes
from a mirror env here: reset with the same seed, the bridge's goals executed in the order it
reported on them (the sim is deterministic; ``mirror_disagreements`` counts StepResults whose
``task_done`` the mirror did not reproduce). Subgoal-image metrics are not computed over ROS
(PSNR and position error show "-"). Over ROS only: each step's frame-in -> feedback times (camera
frame stamp to the client receiving the feedback, same host clock): the first feedback (the step's
sentence, streamed before its subgoal image by the torch backend) and the complete step, their
p50s, and the p50 of each episode's first step.

The per-goal budget is the bench's: the goal's ``max_steps`` is the in-process episode's planning
budget and the node's monitor then allows what the bench's does (``MonitorConfig.for_request``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emu_ros.graph import (
    ROOT,
    RosProcess,
    RosPython,
    RosUnavailable,
    graph_env,
    node_args,
    random_domain_id,
    ros_python,
)

__all__ = ["episode_from_client", "first_feedback_ms", "main", "over_ros_summary", "run_over_ros"]

NODE_READY = "ready: backend="  # the guidance node's log line once configured (model loaded, warmed up) and active
BRIDGE_READY = "sim bridge ready"
CAMERA_RATE_HZ = 20.0  # the sim bridge's camera by default (--camera-hz)


def fixed_places() -> str:
    """The fixed places of the sim tasks (receptacles, zones, cloth parts) that the safety gate is
    told as a robot's configuration: config/sim_guidance.yaml's ``gate_vocabulary``."""
    import os

    import yaml

    candidates = [ROOT / "config" / "sim_guidance.yaml"]
    candidates += [Path(p) / "share" / "emu_guidance" / "config" / "sim_guidance.yaml"
                   for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]  # fmt: skip
    for path in candidates:
        if path.is_file():
            params = yaml.safe_load(path.read_text())
            return str(next(v["ros__parameters"]["gate_vocabulary"] for v in params.values()
                            if "gate_vocabulary" in v.get("ros__parameters", {})))  # fmt: skip
    raise FileNotFoundError(f"config/sim_guidance.yaml not found (looked at {[str(c) for c in candidates]})")


def node_params_for(backend: str, decode: str, model_path: str | None, trust_remote_code: bool, gym_id: str,
                    first_seed: int) -> dict[str, Any]:  # fmt: skip
    """The guidance node's start-up parameters for one (task, backend, decode) of the bench."""
    params: dict[str, Any] = {
        "backend": backend, "model_path": model_path or "", "trust_remote_code": trust_remote_code,
        "decode_mode": "" if decode in ("auto", "oracle") else decode,  # '': the model's own, as in process
        "replan_rate_hz": 20.0, "stats_rate_hz": 1.0,
        "executor_knows_task_done": True,  # the bridge's task_done is the simulator's task check, as in process
        "gate_vocabulary": fixed_places(),
        # The node keeps the last frame it received: without an age limit a goal's first step was once
        # planned from the previous seed's bridge (its cleared table: "done" at step 0, before any
        # StepResult could contradict it). The bridge sends a fresh frame after every StepResult.
        "max_frame_age_s": 2.0,
    }  # fmt: skip
    if backend == "oracle":  # the oracle reads a mirror of the bridge's env: same id and seed (set per episode)
        params.update(sim_env_id=gym_id, sim_seed=first_seed)
    return params


def episode_params(backend: str, sim: Any, seed: int) -> dict[str, Any]:
    """Runtime parameters set per episode (the node stays up): the names this episode's skills accept
    (sentences are parsed against them, as in process against the env's own), the oracle's seed."""
    params: dict[str, Any] = {"object_names": ",".join(sim.name_vocabulary()), "target_names": ",".join(sim.target_names())}
    if backend == "oracle":
        params["sim_seed"] = seed  # the node reloads the oracle's mirror at the goal
    return params


def _goal_key(goal: dict[str, Any] | Any) -> tuple[str, str, str | None]:
    g = goal if isinstance(goal, dict) else goal.to_dict()
    return g["verb"], g["object"].lower().strip(), (g.get("target") or None) and g["target"].lower().strip()


def episode_from_client(out: dict[str, Any], sim_env: Any, seed: int, task: str, backend: str, decode: str,
                        instruction: str, wall_s: float) -> dict[str, Any]:  # fmt: skip
    """An episode dict of the in-process bench's shape (``EpisodeResult.to_dict``) from what the
    Guide client saw, scored on a mirror env (see the module doc)."""
    from emu_guide.types import ActionGoal, GoalStatus
    from planner.runner import SimGroundTruth

    sim_env.reset(seed=seed)
    sim = sim_env.unwrapped
    truth = SimGroundTruth(sim)
    result = out["result"]
    feedback, results = out.get("feedback", []), out.get("step_results", [])
    sentence_at: dict[int, float] = {}  # complete feedback's position -> when its streamed sentence arrived
    complete: list[dict[str, Any]] = []
    for fb in feedback:
        if fb.get("image_pending"):
            sentence_at[len(complete)] = fb["received"]
        else:
            complete.append(fb)
    feedback = complete
    by_goal: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_goal.setdefault(r["goal_id"], []).append(r)
    steps, replans, retries, disagreements = [], 0, 0, 0
    for i, fb in enumerate(feedback):
        k = truth.steps_done()
        gt = truth.step(k)
        goal = ActionGoal(**fb["goal"]) if fb["goal"] else None
        step: dict[str, Any] = {"call": i + 1, "index": fb["index"], "gt_index": k, "text": fb["sentence"],
                                "gt_text": gt.text if gt else None, "goal": fb["goal"] or {},
                                "gt_goal": gt.goal.to_dict() if gt and gt.goal else None,
                                "latency_ms": {"total": fb["latency_ms"]}, "grounding": {},
                                "text_exact": None, "goal_correct": None, "subgoal_psnr": None,
                                "subgoal_pos_error_px": None, "subgoal_pos_error_m": None,
                                "frame_to_feedback_ms": (fb["received"] - fb["frame_stamp"]) * 1e3
                                if fb.get("frame_stamp") else None,
                                "frame_to_sentence_ms": (sentence_at[i] - fb["frame_stamp"]) * 1e3
                                if fb.get("frame_stamp") and i in sentence_at else None}  # fmt: skip
        if fb["is_final"]:
            step["text_exact"] = step["goal_correct"] = gt is None
            last = i == len(feedback) - 1 and result.get("status") == "succeeded"
            step["outcome"] = "final" if last else "final_rejected"
        else:
            if gt is not None:
                step["text_exact"] = fb["sentence"].strip().lower() == gt.text.strip().lower()
                step["goal_correct"] = (goal is not None and goal.status == GoalStatus.OK and gt.goal is not None
                                        and _goal_key(goal) == _goal_key(gt.goal))  # fmt: skip
            reports = by_goal.pop(goal.goal_id, []) if goal is not None else []
            for r in reports:  # the bridge's own rule: only an ok goal other than "done" runs a skill
                if goal is not None and goal.status == GoalStatus.OK and goal.verb != "done":
                    with contextlib.suppress(ValueError):  # SkillError: the bridge reported a failed step
                        sim.execute_skill(goal)
                disagreements += bool(sim.task_success()) != r["task_done"]
            ok = goal is not None and goal.status == GoalStatus.OK
            step["attempts"] = len(reports) if ok else 0
            step["outcome"] = "done" if ok and any(r["success"] for r in reports) else "failed"
            retries += max(0, len(reports) - 1) if ok else 0
        replans += step["outcome"] in ("failed", "final_rejected")
        steps.append(step)
    success = bool(results and results[-1]["task_done"])
    status = result.get("status", "error")
    stop = "task complete" if status == "succeeded" else (result.get("error") or status)
    if "canceled_after_s" in result:
        stop = f"time limit: canceled after {result['canceled_after_s']:.0f} s"
    return {
        "task": task, "seed": seed, "backend": backend, "model_id": result.get("model_id", ""), "decode_mode": decode,
        "instruction": instruction, "success": success, "num_gt_steps": len(truth.plan),
        "completed_steps": truth.steps_done(), "all_steps_correct": success and replans == 0 and retries == 0,
        "replans": replans, "retries": retries, "planning_calls": len(feedback), "attempts": len(results),
        "stop_reason": stop, "wall_s": wall_s, "status": status, "steps": steps,
        "mirror_disagreements": disagreements + sum(len(v) for v in by_goal.values()),  # + reports on goals never fed back
    }  # fmt: skip


def _percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    vals = [v for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None


def first_feedback_ms(step: dict[str, Any]) -> float | None:
    """Frame-in -> a step's first feedback: its streamed sentence when there was one, else the complete step."""
    return step.get("frame_to_sentence_ms") if step.get("frame_to_sentence_ms") is not None else step.get("frame_to_feedback_ms")


def over_ros_summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The over-ROS keys of a summary: frame-in -> feedback times, mirror disagreements.

    A step's first feedback is its streamed sentence when the backend streams (``image_pending``),
    else the complete step; "feedback" times are those of the complete step (subgoal image, goal)."""
    steps = [s for e in episodes for s in e["steps"]]
    all_steps = [s.get("frame_to_feedback_ms") for s in steps]
    return {"frame_to_feedback_ms_p50": _percentile(all_steps, 50), "frame_to_feedback_ms_p95": _percentile(all_steps, 95),
            "frame_to_first_feedback_ms_p50": _percentile([first_feedback_ms(e["steps"][0]) for e in episodes if e["steps"]], 50),
            "frame_to_step_first_feedback_ms_p50": _percentile([first_feedback_ms(s) for s in steps], 50),
            "frame_to_step_first_feedback_ms_p95": _percentile([first_feedback_ms(s) for s in steps], 95),
            "mirror_disagreements": sum(e.get("mirror_disagreements", 0) for e in episodes)}  # fmt: skip


class _Graph:
    """One isolated DDS graph for a (task, backend, decode): the guidance node, up for all its
    episodes, and per episode a sim bridge and a Guide client."""

    def __init__(self, ros: RosPython, logs: Path, tag: str, camera_rate_hz: float = CAMERA_RATE_HZ) -> None:
        self.ros, self.logs, self.tag, self.camera_rate_hz = ros, logs, tag, camera_rate_hz
        self.env = graph_env(random_domain_id(), logs, ros.venv)
        self.node: RosProcess | None = None

    def start_node(self, params: dict[str, Any]) -> None:
        self.node = RosProcess(node_args(self.ros.python, "emu_ros.guidance_node", params), self.env,
                               self.logs / f"node_{self.tag}.log")  # fmt: skip
        self.node.wait_for_log(NODE_READY, timeout=300)

    def episode(self, gym_id: str, seed: int, instruction: str, max_steps: int, time_limit: float,
                params: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        bridge = RosProcess(node_args(self.ros.python, "emu_ros.sim_bridge_node",
                                      {"env_id": gym_id, "seed": seed, "camera_rate_hz": self.camera_rate_hz}),
                            self.env, self.logs / f"bridge_{self.tag}_{seed}.log")  # fmt: skip
        try:
            bridge.wait_for_log(BRIDGE_READY, timeout=120)
            request = {"instruction": instruction, "max_steps": max_steps, "timeout_s": time_limit, "params": params}
            proc = subprocess.run([str(self.ros.python), "-m", "emu_ros.guide_client", json.dumps(request)],
                                  env=self.env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=time_limit + 180)  # fmt: skip
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
                return {"result": {"status": "error", "error": f"guide client gave no result (rc {proc.returncode}): {tail}"}}
            return json.loads(line[len("RESULT "):])
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:  # a failed episode, with its reason
            return {"result": {"status": "error", "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}}
        finally:
            bridge.stop()

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None


def run_over_ros(tasks: list[str], episodes: int, backends: list[str], decodes: list[str], out: Path,
                 seed_offset: int = 0, model_path: str | None = None, time_limit: float = 300.0,
                 trust_remote_code: bool = False, instruction: str | None = None, progress: bool = True,
                 ros: RosPython | None = None, camera_rate_hz: float = CAMERA_RATE_HZ) -> dict[str, Any]:  # fmt: skip
    """Every (task, backend, decode, seed) episode over ROS; writes bench.json (the in-process shape)."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids)
    from planner.bench import _configs, write_report
    from planner.envs import env_id
    from planner.monitor import MonitorConfig
    from sim_envs.seeds import seeds_for

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    gym_ids = {t: env_id(t) for t in tasks}  # unknown task -> ValueError naming the valid ones
    outside = [t for t, g in gym_ids.items() if g not in sim_envs.ENV_IDS]
    if outside:
        raise ValueError(f"over ROS the sim bridge runs sim_envs tasks only, not {outside}")
    ros = ros or ros_python()
    seeds = seeds_for("heldout", episodes, seed_offset)
    max_steps = MonitorConfig().max_planning_calls  # the in-process episode's planning budget
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "over_ros_logs"
    logs.mkdir(exist_ok=True)
    configs = _configs(backends, decodes)
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for task in tasks:
        mirror = gym.make(gym_ids[task])
        for backend, decode in configs:
            graph = _Graph(ros, logs, f"{task}_{backend}_{decode}", camera_rate_hz)
            try:
                graph.start_node(node_params_for(backend, decode, model_path, trust_remote_code, gym_ids[task], seeds[0]))
                for seed in seeds:
                    mirror.reset(seed=seed)
                    sim = mirror.unwrapped
                    words = instruction or sim.instruction  # the bridge's env draws the same one for this seed
                    t_ep = time.perf_counter()
                    seen = graph.episode(gym_ids[task], seed, words, max_steps, time_limit, episode_params(backend, sim, seed))
                    ep = episode_from_client(seen, mirror, seed, task, backend, decode, words, time.perf_counter() - t_ep)
                    results.append(ep)
                    if progress:
                        print(f"  over ROS {task} {backend}/{decode} seed {seed}: {ep['status']:9s} success={ep['success']}"
                              f" steps={ep['planning_calls']} {ep['wall_s']:.1f} s"
                              + (f" ({ep['stop_reason']})" if not ep["success"] else ""), file=sys.stderr, flush=True)
            finally:
                graph.close()
        mirror.close()
    extra = {"over_ros": {"python": str(ros.python), "ros_venv": str(ros.venv) if ros.venv else None,
                          "camera_rate_hz": camera_rate_hz, "goal_max_steps": max_steps, "logs": str(logs)}}  # fmt: skip
    return write_report(out, results, tasks, configs, seeds, 1, time.perf_counter() - t0, use_checker=True,
                        grounded_decoding=True, extra=extra, summary_extra=over_ros_summary)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """``emu-guide bench --over-ros`` (arguments: ``planner.bench.add_arguments``)."""
    from emu_guide.paths import artifacts_root
    from planner.bench import _check_instruction, format_table, resolve_backends

    refused = [(args.no_checker, "--no-checker: over ROS the sim bridge's StepResult (the simulator's checker) decides"),
               (args.text == "free", "--text free: over ROS the node grounds its steps by the bridge's ObjectsInView"
                                     " (grounded decoding); compare with the in-process default --text grounded")]  # fmt: skip
    for bad, why in refused:
        if bad:
            print(f"error: --over-ros does not take {why}", file=sys.stderr)
            return 2
    try:
        ros = ros_python()
    except RosUnavailable as exc:
        print(f"error: --over-ros: {exc}", file=sys.stderr)
        return 2
    backends = resolve_backends(args.backend)
    if args.workers != 1:
        print(f"note: --over-ros runs one episode at a time (one DDS graph); --workers {args.workers} ignored", file=sys.stderr)
    out = Path(args.out) if args.out else artifacts_root() / "bench_over_ros"
    if args.instruction is not None:
        error = _check_instruction(args, backends)
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        report = run_over_ros(args.tasks, args.episodes, backends, args.decode, out, seed_offset=args.seed_offset,
                              model_path=args.model_path, time_limit=args.time_limit,
                              trust_remote_code=args.trust_remote_code, instruction=args.instruction, ros=ros,
                              camera_rate_hz=args.camera_hz)  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"over ROS ({ros.python}): text decoding: {report['text']}")
    print(format_table(report["summaries"]))
    for s in report["summaries"]:
        f = lambda v: "-" if v is None else f"{v:.0f} ms"  # noqa: E731
        print(f"{s['task']} {s['backend']}/{s['decode']}: frame-in -> first feedback p50"
              f" {f(s['frame_to_first_feedback_ms_p50'])} (each goal's first step), {f(s['frame_to_step_first_feedback_ms_p50'])}"
              f" (every step; p95 {f(s['frame_to_step_first_feedback_ms_p95'])}); frame-in -> complete step (subgoal image,"
              f" action goal) p50 {f(s['frame_to_feedback_ms_p50'])}, p95 {f(s['frame_to_feedback_ms_p95'])};"
              f" mirror disagreements {s['mirror_disagreements']}")
    print(f"\n{len(report['episodes'])} episodes over ROS in {report['wall_s']:.1f} s; wrote {out / 'bench.json'},"
          f" success_at_k.png, latency_hist.png, node/bridge logs in {out / 'over_ros_logs'}")
    return 0
