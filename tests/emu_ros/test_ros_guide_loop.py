"""The pieces of the node that need no ROS: the latest-frame store and one guidance run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from emu_guide.types import Frame, GoalStatus, PlanStatus
from emu_ros.guidance_node import LatestFrame
from emu_ros.guide_loop import GuideRun, resize_frame
from model_runtime.backends.base import DecodeOptions, load_backend


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


def test_guide_run_confirms_steps_through_results(env):
    run = GuideRun(load_backend("oracle", env=env), "clear the table", DecodeOptions(mode="oracle"), max_steps=10)
    frame = Frame(env.unwrapped.render(), stamp=7.0)
    first = run.step(frame)
    assert first.goal is not None and first.goal.stamp == 7.0 and first.goal.goal_id and first.goal.status == GoalStatus.OK
    run.record_result(first, False)  # failed: not in the history, planned again
    again = run.step(frame)
    assert again.text == first.text and run.history == [] and again.goal.goal_id != first.goal.goal_id
    env.unwrapped.execute_skill(again.goal)
    run.record_result(again, True)
    assert run.history == [again]
    nxt = run.step(Frame(env.unwrapped.render(), stamp=8.0))
    assert nxt.text != first.text and [s.goal.step_index for s in run.plan.steps] == [0, 1, 2]
    assert run.plan.stamp == 8.0 and not run.done
    plan = run.finish(PlanStatus.CANCELED, "stop")
    assert plan.status == PlanStatus.CANCELED and len(plan.steps) == 3


def test_guide_run_validates_its_inputs(env):
    backend = load_backend("oracle", env=env)
    with pytest.raises(ValueError, match="empty"):
        GuideRun(backend, "   ")
    with pytest.raises(ValueError, match="max_steps"):
        GuideRun(backend, "clear", max_steps=0)
    run = GuideRun(backend, "clear", DecodeOptions(mode="oracle"), max_steps=1)
    run.step(Frame(env.unwrapped.render()))
    assert run.done  # the budget counts every step produced


def test_recent_objects_ground_only_a_frame_with_a_nearby_stamp():
    from emu_ros.guidance_node import RecentObjects
    from emu_ros.guide_loop import ObjectsInView

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
def test_guide_run_with_objects_in_view_clears_the_table_with_the_shipped_model():
    """The node's loop without ROS: frames from the sim, the sim detector's ObjectsInView, results fed back."""
    import gymnasium as gym

    import sim_envs  # noqa: F401
    from emu_ros.guide_loop import ObjectsInView
    from planner.grounding import ColorShapeDetector
    from planner.parse import Vocabulary
    from sim_envs.seeds import HELDOUT_SEEDS

    env = gym.make("sim_envs/TableClear-v0")
    env.reset(seed=HELDOUT_SEEDS[0])
    sim = env.unwrapped
    detector = ColorShapeDetector.for_env(env)
    run = GuideRun(load_backend("torch"), sim.instruction, max_steps=30, vocabulary=Vocabulary.from_env(env))
    free_names = set()
    for t in range(30):
        if run.done:
            break
        image = sim.render()
        seen = tuple(sorted({d.name for d in detector.detect(image, sim.object_names())}))
        step = run.step(Frame(image, stamp=float(t)), ObjectsInView(float(t), tuple(sim.name_vocabulary()), seen))
        if step.is_final:
            break
        assert step.goal is not None and step.goal.status == GoalStatus.OK, step.text
        free_names.add(step.goal.object)
        run.record_result(step, bool(sim.execute_skill(step.goal).success))
    env.close()
    assert sim.task_success() and run.session.finished, [s.text for s in run.plan.steps]
    assert free_names <= set(sim.object_names())
    assert run.naming.put_away == set(sim.object_names()) and run.naming.held is None
