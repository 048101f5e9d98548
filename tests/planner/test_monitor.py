"""Execution monitor decisions on a real sim episode: done checks, retries, re-plans, limits, the record."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401
from emu_guide.types import ActionGoal, Frame, GoalStatus, PlanStep, StepResult
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


# ---- budgets and thresholds at their boundaries (a scripted executor: exact counts, no physics) ----


class ScriptedExecutor:
    """An executor whose outcomes are a script: ``done_after`` executions until the checker says done
    (None: never), ``fail`` executions reported as failed, ``checker`` False for frames only."""

    name = "scripted-for-test"

    def __init__(self, done_after: int | None = 1, fail: int = 0, checker: bool = True, frames=None) -> None:
        self.done_after, self.fail, self.checker = done_after, fail, checker
        self.calls = 0
        self.frames = frames or [np.zeros((8, 8, 3), np.uint8)]

    def execute(self, goal: ActionGoal) -> StepResult:
        self.calls += 1
        return StepResult(goal.step_index, self.calls > self.fail, reason="" if self.calls > self.fail else "slipped")

    def check(self, goal: ActionGoal) -> bool | None:
        if not self.checker:
            return None
        return self.done_after is not None and self.calls >= self.done_after

    def observe(self) -> Frame:
        return Frame(self.frames[min(self.calls, len(self.frames) - 1)])

    def task_done(self) -> bool | None:
        return None


GOAL = ActionGoal("pick", "red cup")
STEP = PlanStep(index=0, text="pick up the red cup", goal=GOAL)


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
def test_step_limit_boundary(max_attempts):
    mon = ExecutionMonitor(ScriptedExecutor(), MonitorConfig(max_attempts=max_attempts))
    mon.attempts = max_attempts - 1
    assert mon.limit_reached() is None  # one goal left
    mon.attempts = max_attempts
    assert "step limit" in mon.limit_reached()
    ex = ScriptedExecutor(done_after=None)
    mon = ExecutionMonitor(ex, MonitorConfig(max_attempts=max_attempts, max_retries=10))
    out = mon.run_step(STEP, GOAL, ex.observe())
    assert out.status == "limit" and ex.calls == max_attempts and out.attempts == max_attempts
    assert mon.attempts == max_attempts and mon.events[-1].kind == "limit"


@pytest.mark.parametrize("max_calls", [1, 3, 80])
def test_planning_limit_boundary(max_calls):
    mon = ExecutionMonitor(ScriptedExecutor(), MonitorConfig(max_planning_calls=max_calls))
    mon.planning_calls = max_calls - 1
    assert mon.limit_reached() is None
    mon.planning_calls = max_calls
    reason = mon.limit_reached()
    assert reason is not None and "planning limit" in reason and f"max_planning_calls={max_calls}" in reason


def test_time_limit_boundary():
    now = [100.0]
    mon = ExecutionMonitor(ScriptedExecutor(), MonitorConfig(time_limit_s=10.0), clock=lambda: now[0])
    now[0] = 110.0
    assert mon.limit_reached() is None  # exactly at the limit: still allowed
    now[0] = 110.001
    assert "time limit" in mon.limit_reached()
    ev = mon.record("plan", 0, "why")
    assert ev.t == pytest.approx(10.001)  # seconds since the episode began


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_retries_boundary(max_retries):
    ex = ScriptedExecutor(done_after=None)
    mon = ExecutionMonitor(ex, MonitorConfig(max_retries=max_retries))
    out = mon.run_step(STEP, GOAL, ex.observe())
    assert out.status == "failed" and out.attempts == ex.calls == 1 + max_retries
    assert [e.kind for e in mon.events].count("retry") == max_retries
    assert mon.events[-1].kind == "replan"
    # done on the very last allowed attempt
    ex = ScriptedExecutor(done_after=1 + max_retries)
    mon = ExecutionMonitor(ex, MonitorConfig(max_retries=max_retries))
    out = mon.run_step(STEP, GOAL, ex.observe())
    assert out.status == "done" and out.attempts == 1 + max_retries


def test_confidence_boundary_and_skill_failure_reported():
    ex = ScriptedExecutor(done_after=1)
    mon = ExecutionMonitor(ex, MonitorConfig(min_confidence=0.5, reject_already_done=False))
    assert mon.run_step(STEP, ActionGoal("pick", "red cup", confidence=0.5), ex.observe()).status == "done"
    ex2 = ScriptedExecutor(done_after=1)
    mon2 = ExecutionMonitor(ex2, MonitorConfig(min_confidence=0.5))
    out = mon2.run_step(STEP, ActionGoal("pick", "red cup", confidence=0.49), ex2.observe())
    assert out.status == "failed" and ex2.calls == 0 and "0.49 < 0.5" in out.reason
    # the skill reports failure but the checker says done: done, with the failure in the reason
    ex3 = ScriptedExecutor(done_after=1, fail=1)
    out = ExecutionMonitor(ex3).run_step(STEP, GOAL, ex3.observe())
    assert out.status == "done" and "skill reported failure: slipped" in out.reason


def test_already_done_check_happens_before_any_execution():
    ex = ScriptedExecutor(done_after=0)
    mon = ExecutionMonitor(ex)
    out = mon.run_step(STEP, GOAL, ex.observe())
    assert out.status == "failed" and ex.calls == 0 and mon.attempts == 0


def test_progress_threshold_boundary_without_checker():
    before = np.zeros((20, 20, 3), np.uint8)
    sub = before.copy()
    sub[5:15, 5:15] = 200
    after = before.copy()
    after[5:10, 5:15] = 200  # half of the predicted change happened
    ex = ScriptedExecutor(checker=False, frames=[before, after])
    p = subgoal_progress(before, after, sub)
    assert 0.2 < p < 0.8
    for threshold, done in ((p, True), (min(1.0, p + 1e-6), False)):
        ex.calls = 0
        mon = ExecutionMonitor(ex, MonitorConfig(progress_threshold=threshold, max_retries=0))
        out = mon.run_step(PlanStep(index=0, text="x", subgoal_image=sub, goal=GOAL), GOAL, Frame(before))
        assert (out.status == "done") is done and out.progress == pytest.approx(p)
    no_sub = ExecutionMonitor(ScriptedExecutor(checker=False))
    done, why, by, verdict = no_sub.decide(PlanStep(index=0, text="x", goal=GOAL), GOAL, Frame(before), Frame(after))
    assert done is False and verdict.progress is None and by == "none" and "cannot confirm" in why


def test_subgoal_progress_exact_values():
    before = np.zeros((20, 20, 3), np.uint8)
    sub = before.copy()
    sub[5:15, 5:15] = 200  # 100 predicted pixels
    after = before.copy()
    after[5:10, 5:15] = 200  # 50 of them happened
    assert subgoal_progress(before, after, sub, blur_sigma=0) == pytest.approx(0.5)
    after[0, 0:10] = 200  # 10 unpredicted changes: -0.5 * 10/100
    assert subgoal_progress(before, after, sub, blur_sigma=0) == pytest.approx(0.45)
    assert subgoal_progress(before, sub, sub, blur_sigma=0) == pytest.approx(1.0)
    # a subgoal that predicts no change scores by how little changed (16 px = everything)
    same = before.copy()
    moved = before.copy()
    moved[0, :8] = 200
    assert subgoal_progress(before, before, same, blur_sigma=0) == 1.0
    assert subgoal_progress(before, moved, same, blur_sigma=0) == pytest.approx(0.5)
    # the change threshold is strict: a difference of exactly 40 is no change
    at = before.copy()
    at[5:15, 5:15] = 40
    assert subgoal_progress(before, before, at, blur_sigma=0, change_threshold=40) == 1.0
    at[5:15, 5:15] = 41
    assert subgoal_progress(before, at, at, blur_sigma=0, change_threshold=40) == pytest.approx(1.0)
    assert subgoal_progress(before, before, at, blur_sigma=0, change_threshold=40) == 0.0


def test_config_boundaries():
    MonitorConfig(max_retries=0, max_replans=0, max_attempts=1, max_planning_calls=1, progress_threshold=0.0)
    MonitorConfig(progress_threshold=1.0, time_limit_s=0.001)
    for bad in (dict(max_retries=-1), dict(max_replans=-1), dict(max_attempts=0), dict(max_planning_calls=0),
                dict(time_limit_s=0.0), dict(progress_threshold=1.01), dict(progress_threshold=-0.01)):
        with pytest.raises(ValueError):
            MonitorConfig(**bad)
    d = MonitorConfig()
    assert (d.max_retries, d.max_replans, d.max_attempts, d.max_planning_calls) == (1, 3, 60, 80)
    assert (d.time_limit_s, d.progress_threshold, d.change_threshold, d.min_confidence) == (300.0, 0.5, 40, 0.0)


def test_events_are_plain_json():
    from planner.monitor import _jsonable

    assert _jsonable({"a": np.int64(3), "b": (np.float32(0.5), None), 1: GoalStatus.OK}) == {
        "a": 3, "b": [0.5, None], "1": "ok"}
    assert _jsonable(np.arange(4)) == [0, 1, 2, 3]
    assert _jsonable(np.zeros(65)).startswith("<array (65,)")
    assert _jsonable(object()).startswith("<object")
