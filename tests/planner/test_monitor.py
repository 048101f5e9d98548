"""Execution monitor decisions on a real sim episode: done checks, retries, re-plans, limits, the record."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401
from emu_guide.types import ActionGoal, GoalStatus, PlanStep
from planner.executor import Executor, SimExecutor
from planner.monitor import ExecutionMonitor, MonitorConfig, subgoal_progress
from sim_envs.seeds import HELDOUT_SEEDS
from tests.planner.conftest import FailingExecutorForTest


@pytest.fixture()
def episode():
    env = gym.make("sim_envs/TableClear-v0")
    env.reset(seed=HELDOUT_SEEDS[1])
    sim = env.unwrapped
    plan, images = sim.ground_truth_plan(), sim.subgoal_images()
    step0 = PlanStep(index=0, text=plan[0].text, subgoal_image=images[0], goal=plan[0].goal)
    yield env, step0
    env.close()


def test_sim_executor_is_an_executor(episode):
    env, step = episode
    ex = SimExecutor(env)
    assert isinstance(ex, Executor)
    assert ex.check(step.goal) is False
    assert ex.execute(step.goal).success and ex.check(step.goal) is True
    bad = ex.execute(ActionGoal("pick", "unicorn"))  # SkillError becomes a failed StepResult
    assert not bad.success and "unknown object" in bad.reason
    assert SimExecutor(env, use_checker=False).check(step.goal) is None


def test_done_by_checker_first_attempt(episode):
    env, step = episode
    ex = SimExecutor(env)
    mon = ExecutionMonitor(ex)
    out = mon.run_step(step, step.goal, ex.observe())
    assert out.status == "done" and out.attempts == 1 and "checker" in out.reason
    assert [e.kind for e in mon.events] == ["execute", "check"]


def test_failure_then_retry_succeeds(episode):
    env, step = episode
    ex = FailingExecutorForTest(SimExecutor(env), failures=1)
    mon = ExecutionMonitor(ex, MonitorConfig(max_retries=1))
    out = mon.run_step(step, step.goal, ex.observe())
    assert out.status == "done" and out.attempts == 2
    kinds = [e.kind for e in mon.events]
    assert kinds == ["execute", "check", "retry", "execute", "check"]
    assert mon.events[0].why == "gripper slipped (test)"


def test_retries_exhausted_asks_for_replan(episode):
    env, step = episode
    ex = FailingExecutorForTest(SimExecutor(env), failures=5)
    mon = ExecutionMonitor(ex, MonitorConfig(max_retries=2))
    out = mon.run_step(step, step.goal, ex.observe())
    assert out.status == "failed" and out.attempts == 3 and ex.calls == 3
    assert mon.events[-1].kind == "replan" and "not done after 3 attempt(s)" in mon.events[-1].why
    json.dumps(mon.events_json())  # the record is JSON serialisable


def test_unknown_and_low_confidence_goals_are_not_executed(episode):
    env, step = episode
    ex = FailingExecutorForTest(SimExecutor(env), failures=0)
    mon = ExecutionMonitor(ex, MonitorConfig(min_confidence=0.5))
    unknown = ActionGoal("done", "", status=GoalStatus.UNKNOWN, reason="no action verb recognised")
    out = mon.run_step(step, unknown, ex.observe())
    assert out.status == "failed" and out.attempts == 0 and "no action verb" in out.reason
    weak = ActionGoal("pick", step.goal.object, confidence=0.1)
    assert mon.run_step(step, weak, ex.observe()).status == "failed"
    assert ex.calls == 0


def test_step_and_time_limits(episode):
    env, step = episode
    ex = FailingExecutorForTest(SimExecutor(env), failures=100)
    mon = ExecutionMonitor(ex, MonitorConfig(max_retries=10, max_attempts=3))
    out = mon.run_step(step, step.goal, ex.observe())
    assert out.status == "limit" and "step limit" in out.reason and ex.calls == 3
    now = [0.0]
    mon = ExecutionMonitor(ex, MonitorConfig(time_limit_s=10.0), clock=lambda: now[0])
    now[0] = 50.0  # the episode has been running for 50 s
    out = mon.run_step(step, step.goal, ex.observe())
    assert out.status == "limit" and "time limit" in out.reason
    with pytest.raises(ValueError, match="time_limit_s"):
        MonitorConfig(time_limit_s=0)


def test_frames_decide_without_a_checker(episode):
    """No checker (as on a robot): the new frame is compared with the predicted subgoal."""
    env, step = episode
    ex = SimExecutor(env, use_checker=False)
    before = ex.observe()
    assert subgoal_progress(before.image, before.image, step.subgoal_image) == 0.0
    mon = ExecutionMonitor(ex)
    out = mon.run_step(step, step.goal, before)
    assert out.status == "done" and out.progress is not None and out.progress > 0.9
    # A failing robot: nothing changes, the frame never approaches the subgoal.
    ex2 = FailingExecutorForTest(SimExecutor(env, use_checker=False), failures=10)
    mon2 = ExecutionMonitor(ex2, MonitorConfig(max_retries=0))
    nxt = env.unwrapped.ground_truth_plan()[1]
    step1 = PlanStep(index=1, text=nxt.text, subgoal_image=env.unwrapped.subgoal_images()[1], goal=nxt.goal)
    out2 = mon2.run_step(step1, step1.goal, ex2.observe())
    assert out2.status == "failed" and out2.progress is not None and out2.progress < 0.2


def test_progress_handles_other_sizes():
    a = np.zeros((32, 32, 3), np.uint8)
    b = a.copy()
    b[8:16, 8:16] = 200
    sub = np.zeros((64, 64, 3), np.uint8)
    sub[16:32, 16:32] = 200  # the same change at twice the resolution
    assert subgoal_progress(a, b, sub) > 0.9
    with pytest.raises(ValueError, match="differ in shape"):
        subgoal_progress(a, np.zeros((16, 16, 3), np.uint8), sub)


def test_progress_tolerates_a_degraded_subgoal_and_rejects_the_wrong_change():
    """A model's subgoal is soft and noisy: the right change must still score high, a wrong one low."""
    import cv2

    rng = np.random.default_rng(0)
    env = gym.make("sim_envs/TableClear-v0")
    for seed in HELDOUT_SEEDS[10:13]:
        env.reset(seed=seed)
        sim = env.unwrapped
        plan, subs = sim.ground_truth_plan(), sim.subgoal_images()
        noisy = cv2.GaussianBlur(subs[0], (0, 0), 1.0).astype(np.float32) + rng.normal(0, 8, subs[0].shape)
        noisy = np.clip(noisy * rng.uniform(0.9, 1.1, 3), 0, 255).astype(np.uint8)
        before = sim.render()
        assert subgoal_progress(before, before, noisy) < 0.2  # nothing happened
        saved = sim.render()
        other = next(s for s in plan if s.goal.verb == "pick" and s.goal.object != plan[0].goal.object)
        assert sim.execute_skill(other.goal).success
        assert subgoal_progress(saved, sim.render(), noisy) < 0.2  # the wrong object was picked
        env.reset(seed=seed)
        assert sim.execute_skill(plan[0].goal).success
        assert subgoal_progress(before, sim.render(), noisy) > 0.6  # the right step, soft subgoal
    env.close()


def test_a_step_already_done_before_executing_is_rejected_not_counted(episode):
    env, step = episode
    ex = SimExecutor(env)
    mon = ExecutionMonitor(ex)
    place = env.unwrapped.ground_truth_plan()[1]
    pick_step = PlanStep(index=1, text=step.text, goal=step.goal)
    assert mon.run_step(step, step.goal, ex.observe()).status == "done"
    assert mon.run_step(PlanStep(index=1, text=place.text, goal=place.goal), place.goal, ex.observe()).status == "done"
    # The item is now where it belongs: picking it "again" is a no-op the checker already calls done.
    attempts = mon.attempts
    out = mon.run_step(pick_step, step.goal, ex.observe())
    assert out.status == "failed" and out.attempts == 0 and "already done" in out.reason
    assert mon.attempts == attempts and mon.events[-1].kind == "replan"
    # Switched off, the old behaviour: executed and counted as done.
    legacy = ExecutionMonitor(ex, MonitorConfig(reject_already_done=False))
    assert legacy.run_step(pick_step, step.goal, ex.observe()).status == "done"
