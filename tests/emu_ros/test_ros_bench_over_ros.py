"""`emu-guide bench --over-ros` (emu_ros/bench_over_ros.py): the closed-loop bench over ROS 2.

Without ROS: one-line refusals (no ROS environment, options that have no meaning over ROS), the
scoring of what a Guide client saw on a same-seed mirror env, and the node's goal budget equal to
a bench episode's. With .ros_venv: one real episode (the guidance node, the sim bridge and the
Guide client as processes over Fast DDS), written in the in-process bench's JSON shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import gymnasium as gym
import pytest
from ros_tier import ROOT, require_ros_venv

import sim_envs  # noqa: F401  (registers the ids)
from emu_ros.bench_over_ros import episode_from_client, over_ros_summary
from planner.monitor import MonitorConfig

SEED = 1000000


def _bench(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu_guide.cli", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_without_a_ros_environment_it_says_what_to_run_in_one_line(tmp_path):
    # this interpreter has no rclpy (the main venv); the ROS venv it would fall back on is missing
    env = {**os.environ, "ROS_VENV": str(tmp_path / "no_ros_venv")}
    out = _bench(["--over-ros", "--backend", "oracle", "--tasks", "table_clear", "--episodes", "1",
                  "--out", str(tmp_path / "bench")], env)  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "ROS 2 environment is not available" in lines[0] and "bash scripts/ros_venv.sh" in lines[0], lines[0]
    assert "rclpy is not importable" in lines[0] and str(tmp_path / "no_ros_venv") in lines[0], lines[0]
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize(("flag", "why"), [(["--no-checker"], "StepResult"), (["--text", "free"], "ObjectsInView")])
def test_options_without_meaning_over_ros_are_refused(tmp_path, flag, why):
    out = _bench(["--over-ros", "--backend", "oracle", "--tasks", "table_clear", "--episodes", "1", *flag])
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"--over-ros does not take {flag[0]}" in out.stderr and why in out.stderr


def test_a_goal_gets_the_budget_of_a_bench_episode():
    """Same seeds, same decisions: the node's per-goal limits (MonitorConfig.for_request with the
    bench's planning budget, the goal's max_steps) are the in-process episode's."""
    bench, goal = MonitorConfig(), MonitorConfig.for_request(MonitorConfig().max_planning_calls)
    for name in ("max_planning_calls", "max_replans", "max_retries", "max_attempts", "reject_already_done"):
        assert getattr(goal, name) == getattr(bench, name), name
    small = MonitorConfig.for_request(2, max_retries=0)  # a short goal: its own budget bounds everything
    assert (small.max_planning_calls, small.max_replans, small.max_attempts) == (2, 2, 3)


def _client_view(env_id: str, seed: int, fail_step: int | None = None, streamed: bool = False) -> dict:
    """What a Guide client would see if the node planned the ground-truth steps and the bridge ran
    them (``fail_step``: that step's goal names an object the scene lacks: a failed skill, re-planned;
    ``streamed``: each step's sentence came first, 40 ms after the frame, as the torch backend streams it)."""
    bridge = gym.make(env_id)
    bridge.reset(seed=seed)
    sim = bridge.unwrapped
    feedback, results, t = [], [], 100.0
    steps = list(sim.ground_truth_plan())
    for i, step in enumerate(steps):
        for bad in ([True, False] if i == fail_step else [False]):
            goal = step.goal.to_dict() | {"goal_id": uuid.uuid4().hex, "stamp": t, "step_index": i}
            if bad:
                goal["object"] = "ghost"  # no such object: the skill controller refuses it (SkillError)
            if streamed:
                feedback.append({"received": t + 0.04, "index": i, "sentence": step.text, "is_final": False,
                                 "latency_ms": 30.0, "decode_mode": "dida", "frame_stamp": t, "goal": None,
                                 "gate_rejections": 0, "image_pending": True})  # fmt: skip
            feedback.append({"received": t + 0.1, "index": i, "sentence": step.text if not bad else "pick up the ghost",
                             "is_final": False, "latency_ms": 90.0, "decode_mode": "dida", "frame_stamp": t, "goal": goal,
                             "gate_rejections": 0})  # fmt: skip
            try:
                ok = sim.execute_skill(type(step.goal)(**goal)).success
            except ValueError:
                ok = False
            results.append({"goal_id": goal["goal_id"], "success": bool(ok), "reason": "", "task_done": bool(sim.task_success()),
                            "duration_s": 0.1})  # fmt: skip
            t += 1.0
    feedback.append({"received": t + 0.05, "index": len(steps), "sentence": "done", "is_final": True, "latency_ms": 80.0,
                     "decode_mode": "dida", "frame_stamp": None, "goal": None, "gate_rejections": 0})  # fmt: skip
    bridge.close()
    return {"result": {"status": "succeeded", "error": "", "model_id": "m", "steps": len(feedback)},
            "feedback": feedback, "step_results": results}  # fmt: skip


@pytest.mark.parametrize("env_id", ["sim_envs/TableClear-v0", "sim_envs/SortBlocks-v0"])
def test_what_the_client_saw_is_scored_on_a_mirror_like_in_process(env_id):
    mirror = gym.make(env_id)
    seen = _client_view(env_id, SEED)
    ep = episode_from_client(seen, mirror, SEED, "t", "torch", "auto", "clear the table", 12.5)
    n = len(seen["step_results"])
    assert ep["success"] and ep["status"] == "succeeded" and ep["mirror_disagreements"] == 0
    assert ep["completed_steps"] == ep["num_gt_steps"] == n and ep["all_steps_correct"]
    assert ep["replans"] == ep["retries"] == 0 and ep["planning_calls"] == n + 1 and ep["attempts"] == n
    assert all(s["text_exact"] and s["goal_correct"] and s["outcome"] == "done" for s in ep["steps"][:-1])
    assert ep["steps"][-1]["outcome"] == "final" and ep["steps"][-1]["text_exact"]
    assert ep["steps"][0]["frame_to_feedback_ms"] == pytest.approx(100.0) and ep["steps"][0]["frame_to_sentence_ms"] is None
    json.dumps(ep, allow_nan=False)  # bench.json material

    streamed = episode_from_client(_client_view(env_id, SEED, streamed=True), mirror, SEED, "t", "torch", "auto",
                                   "clear the table", 12.5)  # fmt: skip
    assert {k: v for k, v in streamed.items() if k != "steps"} == {k: v for k, v in ep.items() if k != "steps"}
    assert [s["frame_to_sentence_ms"] for s in streamed["steps"][:-1]] == pytest.approx([40.0] * n)
    summary = over_ros_summary([streamed])  # the first feedback is the sentence; the complete step's time stays
    assert summary["frame_to_first_feedback_ms_p50"] == pytest.approx(40.0)
    assert summary["frame_to_feedback_ms_p50"] == pytest.approx(100.0)

    seen = _client_view(env_id, SEED, fail_step=1)  # a wrong object: the skill fails, the step is planned again
    ep = episode_from_client(seen, mirror, SEED, "t", "torch", "auto", "clear the table", 12.5)
    assert ep["success"] and ep["mirror_disagreements"] == 0 and ep["replans"] == 1 and not ep["all_steps_correct"]
    failed = [s for s in ep["steps"] if s["outcome"] == "failed"]
    assert len(failed) == 1 and failed[0]["gt_index"] == 1 and not failed[0]["text_exact"] and not failed[0]["goal_correct"]
    mirror.close()


@pytest.mark.ros
@pytest.mark.slow
def test_one_episode_over_ros_writes_the_in_process_bench_shape(tmp_path):
    require_ros_venv()
    from emu_guide.cli import main

    out = tmp_path / "bench"
    code = main(["bench", "--over-ros", "--backend", "oracle", "--tasks", "table_clear", "--episodes", "1",
                 "--workers", "1", "--time-limit", "240", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    (ep,) = report["episodes"]
    logs = sorted(p.name for p in (out / "over_ros_logs").glob("*.log"))
    assert ep["success"] and ep["status"] == "succeeded", (ep["stop_reason"], logs)
    assert ep["seed"] == SEED and ep["mirror_disagreements"] == 0 and ep["completed_steps"] == ep["num_gt_steps"]
    (summary,) = report["summaries"]
    assert summary["success_rate"] == 1.0 and summary["frame_to_first_feedback_ms_p50"] > 0
    assert report["over_ros"]["goal_max_steps"] == MonitorConfig().max_planning_calls
    assert (out / "success_at_k.png").is_file() and logs == ["bridge_table_clear_oracle_oracle_1000000.log",
                                                            "node_table_clear_oracle_oracle.log"]  # fmt: skip
