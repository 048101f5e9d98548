"""Real-rclpy tier: the guidance node (oracle backend over a sim env in the node process) against
probe nodes over Fast DDS, in an isolated graph. Every ROS participant is a .ros_venv subprocess."""

from __future__ import annotations

import time

import pytest
from ros_tier import RosProcess, node_args, random_domain_id, require_ros_venv, ros_env, run_probe

pytestmark = pytest.mark.ros

ENV_ID, SEED = "sim_envs/TableClear-v0", 1000000
INSTRUCTION = "clear the table and put everything where it belongs"
ORACLE = {"backend": "oracle", "sim_env_id": ENV_ID, "sim_seed": SEED, "decode_mode": "oracle",
          "stats_rate_hz": 2.0, "frame_timeout_s": 10.0}  # fmt: skip


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    python = require_ros_venv()
    tmp = tmp_path_factory.mktemp("ros_graph")
    return python, ros_env(random_domain_id(), tmp), tmp


@pytest.fixture(scope="module")
def node(graph):
    python, env, tmp = graph
    proc = RosProcess(node_args(python, "emu_ros.guidance_node", ORACLE), env, tmp / "guidance_node.log")
    try:
        proc.wait_for_log("ready:")
        proc.wait_for_log("backend 'oracle' loaded")
        yield proc
    finally:
        assert proc.stop() in (0, -2), proc.log.read_text()[-2000:]


def test_frames_in_goal_out_feedback_result_plan_and_action_goal_topics(graph, node):
    python, env, _ = graph
    out = run_probe(python, "oneshot", {"instruction": INSTRUCTION, "max_steps": 1}, env)
    assert out["accepted"]
    res = out["result"]
    assert res["ros_status"] == 4 and res["status"] == "succeeded" and res["error"] == ""  # 4 = SUCCEEDED
    # feedback streams each step as it is produced, in order
    assert [fb["index"] for fb in out["feedback"]] == [s["index"] for s in res["steps"]]
    assert out["steps_done"] == [1]
    first = out["feedback"][0]
    assert first["sentence"].startswith("pick up") and first["verb"] == "pick" and first["object"]
    assert first["decode_mode"] == "oracle" and first["image"] == [96, 96, "rgb8"]
    # the step was planned from a frame the probe published (its stamp comes back)
    published = set(out["published_keys"])
    assert all(round(s["stamp"] * 1e6) in published for s in out["feedback"])
    # Plan topic: one per step plus the final one, header = the source frame; ActionGoal topic: one per step
    plans = out["plans"]
    assert [p["n"] for p in plans] == [1, 1] and plans[0]["status"] == "running" and plans[-1]["status"] == "succeeded"
    assert all(p["frame_id"] == "probe_cam" and p["instruction"] == INSTRUCTION for p in plans)
    assert plans[0]["model_id"].startswith("oracle:")
    assert [g["goal_id"] for g in out["goals"]] == [fb["goal_id"] for fb in out["feedback"]]
    assert len(out["goals"]) == 1 and out["goals"][0]["verb"] == "pick"
    assert out["frame_in_to_feedback_s"] and 0 < out["frame_in_to_feedback_s"][0] < 5.0


def test_parameter_changes_are_validated(graph, node):
    python, env, _ = graph
    out = run_probe(python, "params", {}, env)
    for accepted in ("decode_steps=6", "guidance_scale=2.5", "decode_mode='ar'", "max_steps=5"):
        assert out[accepted][0], (accepted, out[accepted])
    for rejected, reason in [("decode_steps=0", "decode_steps=0 rejected"), ("guidance_scale=101.0", "guidance_scale"),
                             ("backend='nope'", "must be one of"), ("decode_mode='fast'", "decode_mode"),
                             ("replan_rate_hz=0.0", "replan_rate_hz"), ("device='tpu'", "cpu, cuda"),
                             ("image_topic='other'", "read-only"), ("decode_steps='eight'", ""),
                             ("plan_images='some'", "all, last or none")]:  # fmt: skip
        ok, why = out[rejected]
        assert not ok, rejected
        assert reason.lower() in why.lower(), (rejected, why)
    assert out["values"] == {"decode_steps": 6, "guidance_scale": 2.5, "decode_mode": "ar", "max_steps": 5,
                             "backend": "oracle", "image_topic": "image_raw"}  # fmt: skip


def test_bad_frames_are_counted_logged_and_survived(graph, node):
    python, env, _ = graph
    out = run_probe(python, "bad_frames", {"instruction": INSTRUCTION, "repeat": 3}, env)
    stats = out["stats"]
    assert stats is not None
    # 12 invalid frames (best-effort QoS on localhost: allow a lost sample or two, never a crash)
    assert 10 <= stats["rejected"] <= 12 and stats["received"] >= 5
    reasons = " ".join(stats["rejected_by_reason"])
    for why in ("unsupported image encoding", "data size", "image data is empty", "compressed image"):
        assert why in reasons, (why, stats["rejected_by_reason"])
    assert out["result"]["status"] == "succeeded"
    assert abs(out["result"]["steps"][0]["stamp"] - out["last_good_stamp"]) < 1e-3  # the latest valid frame
    assert "rejected camera frame" in node.log.read_text()
    assert node.proc.poll() is None


def test_cancel_and_preemption(graph, node):
    python, env, _ = graph
    out = run_probe(python, "cancel_preempt", {"instruction": INSTRUCTION}, env)
    assert out["cancel_goals"] == 1 and out["feedback_before_cancel"] >= 1
    assert out["canceled"]["ros_status"] == 5 and out["canceled"]["status"] == "canceled"  # 5 = CANCELED
    assert out["preempted"]["ros_status"] == 6 and "preempted" in out["preempted"]["error"]  # 6 = ABORTED
    assert out["preempting"]["status"] == "succeeded" and len(out["preempting"]["steps"]) == 1
    # cancel and preemption each told the executor to stop (ActionGoal verb "stop" on action_goal)
    reasons = [s["reason"] for s in out["stops"]]
    assert len(reasons) == 2 and reasons[0].startswith("canceled") and reasons[1].startswith("preempted"), out["stops"]


def test_backend_error_aborts_the_goal_with_its_message_and_the_node_keeps_serving(graph, node):
    python, env, _ = graph
    args = {"instruction": INSTRUCTION, "param": "sim_env_id", "bad": "sim_envs/NoSuchTask-v0", "good": ENV_ID}
    out = run_probe(python, "backend_error", args, env)
    assert out["set_bad"][0] and out["set_good"][0]
    failed = out["failed"]  # the backend cannot load: every goal says why
    assert failed["ros_status"] == 6 and failed["status"] == "failed"
    assert "backend 'oracle' failed to load" in failed["error"] and "NoSuchTask" in failed["error"]
    assert out["recovered"]["status"] == "succeeded"
    # a loaded backend raising in next_step (64x64 frames; the oracle's env renders 96x96)
    assert all(ok for ok, _ in out["set_size"] + out["reset_size"])
    step_error = out["step_error"]
    assert step_error["ros_status"] == 6 and step_error["error"].startswith("BackendError") and "64x64" in step_error["error"]
    assert step_error["plan_status"] == "failed" and step_error["steps"] == []
    assert out["after"]["status"] == "succeeded"
    assert node.proc.poll() is None


def test_continuous_mode_replans_from_new_frames_until_the_step_budget(graph, node):
    python, env, _ = graph
    out = run_probe(python, "budget", {"instruction": INSTRUCTION}, env)
    assert out["set"][0] and out["reset"][0]
    res = out["result"]
    assert res["status"] == "failed" and res["error"].startswith("planning limit: 3") and len(res["steps"]) == 3
    stamps = out["feedback_stamps"]
    assert len(stamps) == 3 and stamps[0] < stamps[1] < stamps[2]  # each step from a newer frame


def test_goal_images_are_planned_from_and_bad_ones_abort(graph, node):
    python, env, _ = graph
    out = run_probe(python, "goal_images", {"instruction": INSTRUCTION}, env)
    assert out["good"]["status"] == "succeeded" and out["good"]["steps"][0]["stamp"] == pytest.approx(42.5)
    assert out["bad"]["status"] == "failed" and "unsupported image encoding '32FC1'" in out["bad"]["error"]


def test_diagnostics_image_topics_and_a_latched_plan(graph, node):
    python, env, _ = graph
    out = run_probe(python, "observe", {"instruction": INSTRUCTION}, env)
    assert out["result"]["status"] == "succeeded"
    diag = out["diagnostics"]
    assert diag is not None and set(diag) == {"emu_guidance: backend", "emu_guidance: camera frames",
                                              "emu_guidance: planning", "emu_guidance: safety gate"}  # fmt: skip
    backend = diag["emu_guidance: backend"]
    assert backend["level"] == 0 and backend["message"] == "oracle loaded" and backend["values"]["lifecycle_state"] == "active"
    assert int(diag["emu_guidance: camera frames"]["values"]["received"]) > 0
    planning = diag["emu_guidance: planning"]["values"]
    assert int(planning["steps_published"]) >= 1 and float(planning["p50_ms"]) >= 0 and "p95_ms" in planning
    assert int(diag["emu_guidance: safety gate"]["values"]["passed"]) >= 1
    # the subgoal image (the oracle renders 96x96) and the annotated camera frame (scaled up to >= 384 wide)
    assert out["subgoal"] and out["subgoal"][-1][:3] == [96, 96, "rgb8"] and out["subgoal"][-1][3] == 96 * 96 * 3
    h, w, enc, n, frame_id = out["annotated"][-1]
    assert enc == "rgb8" and w >= 384 and n == h * w * 3 and frame_id == "probe_cam"
    # a subscriber that joined after the goal still gets the last plan (transient local)
    assert out["late_plan"] == {"n": 1, "status": "succeeded", "instruction": INSTRUCTION}


def test_safety_gate_rejections_in_feedback_and_diagnostics_and_approval(graph, node):
    python, env, _ = graph
    out = run_probe(python, "gate", {"instruction": INSTRUCTION}, env, timeout=180)
    assert out["set_verbs"][0] and out["reset_verbs"][0] and all(ok for ok, _ in out["set_approval"])
    fb = out["rejected_feedback"]
    assert fb and fb[0]["status"] == "unknown" and fb[0]["gate_rejections"] == 1
    assert fb[0]["reason"].startswith("safety gate: verb 'pick' is not allowed"), fb
    gate = out["diag_gate"]
    assert gate["level"] == 1 and int(gate["values"]["rejected: verb"]) >= 1 and "verb 'pick'" in gate["message"]
    approved, denied = out["decisions"]
    for d in (approved, denied):
        assert d["wrong"][0] is False and "no goal 'no-such-goal' is waiting" in d["wrong"][1]
        assert d["right"][0] is True
    assert [g[0] for g in approved["sent"]] == [approved["held"]] and approved["sent"][0][1] == "ok"  # published once approved
    assert approved["feedback"][0][0] == "ok"
    assert denied["feedback"][0] == ["unknown", "safety gate: denied by the operator: operator says no"]
    assert all(g[1] != "ok" for g in denied["sent"])  # a denied goal never goes out as ok


def test_lifecycle_configure_fails_with_its_reason_then_activate_and_deactivate(graph, tmp_path):
    """Its own graph: an unconfigured node next to the module's would share the action name."""
    python = graph[0]
    env = ros_env(random_domain_id(), tmp_path)
    params = {**ORACLE, "autostart": False, "sim_env_id": "sim_envs/NoSuchTask-v0"}
    proc = RosProcess(node_args(python, "emu_ros.guidance_node", params), env, tmp_path / "lifecycle.log")
    try:
        time.sleep(1.0)
        args = {"instruction": INSTRUCTION, "param": "sim_env_id", "good": ENV_ID}
        out = run_probe(python, "lifecycle", args, env, timeout=180)
    finally:
        proc.stop()
    assert out["initial"] == "unconfigured"
    assert out["configure_bad"] is False and out["after_bad"] == "unconfigured"
    assert out["diag_bad"]["level"] == 2 and "backend 'oracle' failed to load" in out["diag_bad"]["message"]
    assert "NoSuchTask" in out["diag_bad"]["message"] and "configure failed" in proc.log.read_text()
    assert out["set_good"][0] and out["configure_good"] is True and out["after_configure"] == "inactive"
    assert out["inactive_goal_accepted"] is False  # configured but not active: goals refused
    assert out["activate"] and out["after_activate"] == "active" and out["active_result"]["status"] == "succeeded"
    assert out["deactivate"] and out["after_deactivate"] == "inactive" and out["deactivated_goal_accepted"] is False
    assert out["diag_last"]["emu_guidance: backend"]["values"]["lifecycle_state"] == "inactive"


def test_wrong_type_start_up_parameter_is_one_line(graph):
    python, env, tmp = graph
    proc = RosProcess(node_args(python, "emu_ros.guidance_node", {**ORACLE, "replan_rate_hz": 2}), env, tmp / "type.log")
    assert proc.proc.wait(60) == 2
    proc.stop()
    text = proc.log.read_text().strip()
    assert text.splitlines()[-1] == "emu_guidance node: parameter 'replan_rate_hz' must be of type double, got 2 (write 2.0)"
    assert "Traceback" not in text


def test_bad_initial_parameter_stops_the_node_with_a_clear_error(graph):
    python, env, tmp = graph
    proc = RosProcess(node_args(python, "emu_ros.guidance_node", {**ORACLE, "decode_steps": 0}), env, tmp / "bad.log")
    assert proc.proc.wait(60) == 2
    proc.stop()
    assert "decode_steps=0 rejected" in proc.log.read_text()


@pytest.mark.slow
def test_closed_loop_over_ros_with_the_sim_bridge(tmp_path):
    """The whole loop over ROS: sim bridge camera -> guidance node -> ActionGoal -> bridge executes ->
    StepResult + new frame -> next step, until the task is done. Its own graph: the module's node
    would otherwise answer the same Guide goals (two servers of one action name both execute)."""
    python, tmp = require_ros_venv(), tmp_path
    env = ros_env(random_domain_id(), tmp)
    bridge = RosProcess(node_args(python, "emu_ros.sim_bridge_node", {"env_id": ENV_ID, "seed": SEED, "camera_rate_hz": 20.0}),
                        env, tmp / "bridge.log")  # fmt: skip
    guide = RosProcess(node_args(python, "emu_ros.guidance_node", {**ORACLE, "replan_rate_hz": 20.0}), env, tmp / "loop_node.log")
    try:
        bridge.wait_for_log("sim bridge ready")
        guide.wait_for_log("backend 'oracle' loaded")
        out = run_probe(python, "closed_loop", {"instruction": INSTRUCTION, "max_steps": 40, "timeout": 150}, env, timeout=180)
    finally:
        guide.stop()
        bridge.stop()
    res = out["result"]
    assert res["status"] == "succeeded", (res, guide.log.read_text()[-2000:])
    results = out["step_results"]
    assert results and results[-1]["task_done"], results
    failed = [r for r in results if not r["success"]]
    assert len(failed) <= 2, failed  # a skill may fail now and then; the loop plans that step again
    # every executed goal came from a streamed step; the goals form the ground-truth-length plan
    assert [r["goal_id"] for r in results] == out["goals"][: len(results)], (results, out["goals"], res["steps"])
    assert [f["goal_id"] for f in out["feedback"]] == [s["goal_id"] for s in res["steps"]] and len(res["steps"]) >= 4
    verbs = [s["verb"] for s in res["steps"]]
    assert verbs[0] == "pick" and "place" in verbs
    # the bridge's detector published ObjectsInView with every frame; the node grounded its steps by them
    objects = out["stats"]["objects"]
    assert objects["received"] > 0 and objects["rejected"] == 0, objects
    assert objects["steps_grounded"] >= len(res["steps"]) - 1, objects


def test_sim_bridge_executes_goals_and_reports_failures_with_reasons(tmp_path):
    """The sim bridge alone: a valid goal runs the skill controller; an unknown object, a 'done' before
    the task is complete and an unparsed goal come back as failed StepResults naming why."""
    import gymnasium as gym

    import sim_envs  # noqa: F401

    env = gym.make(ENV_ID)
    env.reset(seed=SEED)
    first = env.unwrapped.ground_truth_plan()[0].goal
    env.close()
    python = require_ros_venv()
    env_vars = ros_env(random_domain_id(), tmp_path)
    bridge = RosProcess(node_args(python, "emu_ros.sim_bridge_node", {"env_id": ENV_ID, "seed": SEED, "camera_rate_hz": 10.0}),
                        env_vars, tmp_path / "bridge.log")  # fmt: skip
    goals = [(first.verb, first.object, first.target or ""), ("pick", "unicorn", ""), ("done", "", "")]
    try:
        bridge.wait_for_log("sim bridge ready")
        out = run_probe(python, "bridge_goals", {"goals": goals}, env_vars)
    finally:
        bridge.stop()
    assert len(out["results"]) == 3, (out, bridge.log.read_text()[-3000:])
    ok, unknown, done = out["results"]
    assert ok["goal_id"] == "g0" and ok["success"] and ok["duration_s"] > 0 and not ok["task_done"]
    assert not unknown["success"] and "unicorn" in unknown["reason"]
    assert not done["success"] and "not complete" in done["reason"]
    assert out["frames"] > 0 and out["frame_shape"] == [96, 96, "rgb8"]
    # one ObjectsInView per frame, with the frame's stamp: the detector's class list and what it sees
    assert out["objects"] and {o["stamp"] for o in out["objects"]} & set(out["frame_stamps"])
    assert all(o["known"] == 80 for o in out["objects"]) and 4 <= len(out["objects"][-1]["names"]) <= 6
