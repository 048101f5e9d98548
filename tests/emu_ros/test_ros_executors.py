"""The pieces of the node that need no ROS: the latest-frame store, the executors the node plugs into the
one step loop (planner.loop), and the loop run as the node runs it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from emu_guide.types import Frame, GoalStatus, PlanStatus
from emu_ros.node_parts import LatestFrame, PublishingPlanAhead, RobotExecutor, StepResults
from model_runtime.backends.base import DecodeOptions, load_backend
from planner.executor import ExecutorError
from planner.grounded import ObjectsInView
from planner.loop import GuidanceLoop, LoopConfig, resize_frame
from planner.monitor import MonitorConfig


def _frame(stamp: float, value: int = 0) -> Frame:
    return Frame(np.full((4, 4, 3), value, np.uint8), stamp=stamp)


def test_latest_frame_keeps_only_the_newest_and_counts_drops():
    store = LatestFrame()
    for i in range(5):
        store.put(_frame(float(i), i))
    got = store.wait_newer(0, 0.0, timeout=0.1, max_age=0.0, stop=lambda: False)
    assert got is not None and got[0].stamp == 4.0 and got[1] == 5
    stats = store.stats()
    assert stats["received"] == 5 and stats["dropped"] == 4  # four overwritten before any use
    store.put(_frame(5.0))  # the previous one was used: not a drop
    assert store.stats()["dropped"] == 4
    store.reject(ValueError("unsupported image encoding 'yuv422'; expected one of ..."))
    assert store.stats()["rejected_by_reason"] == {"unsupported image encoding 'yuv422'": 1}


def test_wait_newer_blocks_until_a_fresh_frame_and_honours_stop_and_age():
    store = LatestFrame()
    store.put(_frame(1.0))
    seq = store.wait_newer(0, 0.0, 0.1, 0.0, lambda: False)[1]
    assert store.wait_newer(seq, 0.0, 0.1, 0.0, lambda: False) is None  # nothing newer: timeout
    threading.Timer(0.1, lambda: store.put(_frame(2.0))).start()
    t0 = time.monotonic()
    got = store.wait_newer(seq, 0.0, 5.0, 0.0, lambda: False)
    assert got[0].stamp == 2.0 and time.monotonic() - t0 < 2.0
    assert store.wait_newer(0, time.monotonic() + 10, 5.0, 0.0, lambda: True) is None  # stop() ends the wait
    time.sleep(0.15)
    assert store.wait_newer(0, 0.0, 0.1, max_age=0.05, stop=lambda: False) is None  # too old


def test_resize_frame():
    f = Frame(np.zeros((40, 60, 3), np.uint8), stamp=3.0, frame_id="c")
    r = resize_frame(f, (20, 30))
    assert r.image.shape == (20, 30, 3) and (r.stamp, r.frame_id) == (3.0, "c")
    assert resize_frame(f, (40, 60)) is f
    with pytest.raises(ValueError, match="positive"):
        resize_frame(f, (0, 30))


@pytest.fixture
def env():
    import gymnasium as gym

    import sim_envs  # noqa: F401

    e = gym.make("sim_envs/TableClear-v0")
    e.reset(seed=1000000)
    yield e
    e.close()


class _ResultMsg:
    """The fields of emu_guidance/StepResult the executor reads (the real message needs the ROS venv)."""

    def __init__(self, success: bool, reason: str = "", task_done: bool = False) -> None:
        self.success, self.reason, self.task_done = success, reason, task_done


def _node_config(max_steps: int) -> LoopConfig:
    return LoopConfig(decode=DecodeOptions(mode="oracle"), keep_images=False, monitor=MonitorConfig.for_request(max_steps))


def test_robot_executor_runs_the_loop_on_step_results(env):
    """Continuous mode: each goal goes out, the robot's StepResult comes back (a failure is retried)."""
    sim = env.unwrapped
    frames, results, sent = LatestFrame(), StepResults(), []
    answered = {"n": 0}

    def robot(goal):  # the robot: fails its first attempt, then executes and reports
        sent.append(goal)
        answered["n"] += 1
        ok = answered["n"] > 1 and sim.execute_skill(goal).success
        results.put(goal.goal_id, _ResultMsg(ok, "" if ok else "slipped", task_done=bool(sim.task_success())))
        image, n = sim.render(), answered["n"]  # the camera's next frame arrives after the result
        threading.Timer(0.02, lambda: frames.put(Frame(image, stamp=float(n)))).start()

    frames.put(Frame(sim.render(), stamp=0.0))
    executor = RobotExecutor(robot, results, frames, lambda: False, wait_for_result=True, result_timeout_s=2.0,
                             frame_timeout_s=2.0, max_frame_age_s=0.0, rate_hz=1000.0)
    result = GuidanceLoop(load_backend("oracle", env=env), sim.instruction, executor, _node_config(40)).run()
    assert result.status == PlanStatus.SUCCEEDED and sim.task_success(), result.stop_reason
    assert result.records[0].attempts == 2 and result.retries == 1  # the slip was retried, not re-planned
    assert sent[0].goal_id == sent[1].goal_id and len({g.goal_id for g in sent}) == len(sent) - 1
    assert [g.step_index for g in sent[1:]] == list(range(len(sent) - 1))


def test_robot_executor_without_a_result_fails_the_run_with_the_reason(env):
    sim = env.unwrapped
    frames = LatestFrame()
    frames.put(Frame(sim.render(), stamp=0.0))
    executor = RobotExecutor(lambda goal: None, StepResults(), frames, lambda: False, wait_for_result=True,
                             result_timeout_s=0.2, frame_timeout_s=0.2, max_frame_age_s=0.0, rate_hz=1000.0)
    result = GuidanceLoop(load_backend("oracle", env=env), sim.instruction, executor, _node_config(5)).run()
    assert result.status == PlanStatus.FAILED and "no StepResult" in result.stop_reason
    stopped = RobotExecutor(lambda goal: None, StepResults(), LatestFrame(), lambda: True, wait_for_result=True,
                            result_timeout_s=5.0, frame_timeout_s=5.0, max_frame_age_s=0.0, rate_hz=1000.0)
    with pytest.raises(ExecutorError, match="no camera frame"):
        stopped.observe()


def test_plan_ahead_publishes_every_goal_and_a_spent_budget_fails(env):
    sim = env.unwrapped
    sent = []
    frame = Frame(sim.render(), stamp=7.0)
    loop = GuidanceLoop(load_backend("oracle", env=env), sim.instruction, PublishingPlanAhead(frame, sent.append), _node_config(3))
    result = loop.run()
    assert result.status == PlanStatus.FAILED and "planning limit" in result.stop_reason  # 3 steps, task not done
    # The budget counts planning calls: the third planned step still runs, then the run stops.
    assert [g.step_index for g in sent] == [0, 1, 2] and all(g.stamp == 7.0 and g.goal_id for g in sent)
    assert len(result.plan.steps) == 3 and result.plan.error == result.stop_reason
    assert all(s.goal.status == GoalStatus.OK for s in result.plan.steps)


def test_the_loop_validates_its_instruction(env):
    backend = load_backend("oracle", env=env)
    frame = Frame(env.unwrapped.render())
    with pytest.raises(ValueError, match="empty"):
        GuidanceLoop(backend, "   ", PublishingPlanAhead(frame, print))


def test_recent_objects_ground_only_a_frame_with_a_nearby_stamp():
    from emu_ros.node_parts import RecentObjects

    store = RecentObjects(keep=3)
    for t in (1.0, 2.0, 3.0, 4.0):
        store.put(ObjectsInView(t, ("red cup", "blue cup"), ("red cup",) if t < 4 else ()))
    assert store.for_frame(4.1, max_age=0.5).names == ()  # the nearest stamp wins
    assert store.for_frame(1.0, max_age=0.5) is None  # stamp 1.0 fell out of the last 3
    assert store.for_frame(9.0, max_age=0.5) is None  # nothing near: planned free
    assert store.stats() == {"received": 4, "rejected": 0, "last_error": "", "steps_grounded": 1, "steps_free": 2}
    with pytest.raises(ValueError, match="not among the detector's known names"):
        ObjectsInView(1.0, ("red cup",), ("green cup",))


@pytest.mark.slow
def test_node_loop_with_objects_in_view_clears_the_table_with_the_shipped_model():
    """The node's loop without ROS: the shipped model, the sim detector's ObjectsInView, the robot's results."""
    import gymnasium as gym

    import sim_envs  # noqa: F401
    from emu_ros.node_parts import DetectorTopic, RecentObjects
    from planner.grounding import ColorShapeDetector
    from planner.parse import Vocabulary
    from sim_envs.seeds import HELDOUT_SEEDS

    env = gym.make("sim_envs/TableClear-v0")
    env.reset(seed=HELDOUT_SEEDS[0])
    sim = env.unwrapped
    detector = ColorShapeDetector.for_env(env)
    frames, results, recent, named = LatestFrame(), StepResults(), RecentObjects(), set()

    def camera(stamp: float) -> None:  # a camera frame and the detector's names for it
        image = sim.render()
        seen = tuple(sorted({d.name for d in detector.detect(image, sim.object_names())}))
        recent.put(ObjectsInView(stamp, tuple(sim.name_vocabulary()), seen))
        frames.put(Frame(image, stamp=stamp))

    def robot(goal):
        named.add(goal.object)
        ok = bool(sim.execute_skill(goal).success)
        results.put(goal.goal_id, _ResultMsg(ok, task_done=bool(sim.task_success())))
        stamp = float(frames.seq + 1)
        threading.Timer(0.02, lambda: camera(stamp)).start()  # the camera's next frame arrives after the result

    camera(0.0)
    executor = RobotExecutor(robot, results, frames, lambda: False, wait_for_result=True, result_timeout_s=5.0,
                             frame_timeout_s=5.0, max_frame_age_s=0.0, rate_hz=1000.0)
    config = _node_config(30)
    config.decode = DecodeOptions()
    config.grounded_decoding = True
    loop = GuidanceLoop(load_backend("torch"), sim.instruction, executor, config, vocabulary=Vocabulary.from_env(env),
                        objects=DetectorTopic(recent, 0.5))
    result = loop.run()
    env.close()
    assert result.status == PlanStatus.SUCCEEDED and sim.task_success(), [s.text for s in result.plan.steps]
    assert named <= set(sim.object_names())
    assert loop.naming.put_away == set(sim.object_names()) and loop.naming.held is None


def test_annotated_view_diagnostics_and_latency_window():
    from emu_guide.types import ActionGoal
    from emu_ros.node_parts import ERROR, OK, WARN, LatencyWindow, annotate, diagnostics

    frame = np.zeros((96, 96, 3), np.uint8)
    ok = annotate(frame, 0, "pick up the red cup", ActionGoal("pick", "red cup"))
    bad = annotate(frame, 1, "pick up the arm", ActionGoal("pick", "arm", status=GoalStatus.UNKNOWN, reason="safety gate: no"))
    assert ok.shape == (384, 384, 3) and ok.dtype == np.uint8 and ok[0, 200].tolist() == [40, 200, 40]  # green border
    assert bad[0, 200].tolist() == [230, 40, 40] and (bad[40:60] != ok[40:60]).any()  # red, and the reason drawn
    window = LatencyWindow(keep=10)
    assert window.percentiles() == {}
    for ms in range(1, 21):
        window.add(float(ms))
    assert window.percentiles() == {"p50_ms": 15.0, "p95_ms": 20.0, "max_ms": 20.0} and window.count == 20  # the last 10
    gate = {"passed": 3, "rejected": 2, "rejected_by_check": {"object": 2}, "last_rejection": "object 'arm' is not grounded"}
    statuses = diagnostics("active", {"name": "torch", "loaded": False, "error": "backend 'torch' failed to load: X"},
                           {"received": 0, "rejected_by_reason": {}}, {}, {}, 0, gate)  # fmt: skip
    by_name = {s["name"]: s for s in statuses}
    assert by_name["emu_guidance: backend"]["level"] == ERROR and "failed to load" in by_name["emu_guidance: backend"]["message"]
    assert by_name["emu_guidance: camera frames"]["level"] == WARN  # active and no frame yet
    g = by_name["emu_guidance: safety gate"]
    assert g["level"] == WARN and g["values"]["rejected: object"] == 2 and "last: object 'arm'" in g["message"]
    assert diagnostics("inactive", {"name": "oracle", "loaded": True, "error": ""}, {}, {}, {}, 0, {})[0]["level"] == OK
