"""Closed-loop episodes: oracle backend + parser + grounding + monitor + sim executor."""

from __future__ import annotations

import dataclasses
import json

import pytest

from emu_guide.types import PlanStep
from model_runtime.backends.oracle import OracleBackend
from planner.envs import make_env
from planner.executor import SimExecutor
from planner.monitor import MonitorConfig
from planner.runner import RunnerConfig, run_episode
from sim_envs.seeds import HELDOUT_SEEDS
from tests.planner.conftest import FailingExecutorForTest


@pytest.mark.parametrize("task", ["table_clear", "sort_blocks"])
def test_oracle_episode_succeeds_on_a_heldout_seed(task):
    env = make_env(task)
    result = run_episode(env, OracleBackend(env), HELDOUT_SEEDS[5])
    env.close()
    assert result.success, result.stop_reason
    assert result.completed_steps == result.num_gt_steps
    assert result.all_steps_correct and result.replans == 0
    assert result.steps[-1].outcome == "final"
    assert all(s.goal_correct and s.text_exact for s in result.steps)  # parser reproduces every GT goal
    assert all(s.subgoal_psnr == 100.0 for s in result.steps[:-1])  # oracle subgoals are exact
    assert all("total" in s.latency_ms and "planner" in s.latency_ms for s in result.steps[:-1])
    picks = [s.grounding_error_m for s in result.steps if s.goal.get("verb") == "pick"]
    assert any(e is not None for e in picks)
    json.dumps(result.to_dict())  # metrics and the decision record are plain JSON


def test_failures_are_retried_then_replanned():
    env = make_env("table_clear")
    executor = FailingExecutorForTest(SimExecutor(env), failures=3)
    config = RunnerConfig(monitor=MonitorConfig(max_retries=1, max_replans=2))
    result = run_episode(env, OracleBackend(env), HELDOUT_SEEDS[6], config, executor=executor)
    env.close()
    assert result.success
    assert result.retries >= 2 and result.replans == 1 and not result.all_steps_correct
    kinds = [e["kind"] for e in result.events]
    assert kinds.count("retry") >= 2 and "replan" in kinds
    assert result.steps[0].outcome == "failed" and result.steps[1].outcome == "done"


class GarbledFirstAnswerBackendForTest:
    """A model that first answers with an unparseable sentence, then behaves like the oracle."""

    name = "garbled-for-test"

    def __init__(self, inner: OracleBackend, garbled: int) -> None:
        self.inner, self.garbled = inner, garbled
        self.model_id, self.image_size = "garbled", inner.image_size

    def next_step(self, frame, instruction, history, options=None) -> PlanStep:
        step = self.inner.next_step(frame, instruction, history, options)
        if self.garbled > 0 and not step.is_final:
            self.garbled -= 1
            return dataclasses.replace(step, text="the the cup cup rack")
        return step

    def close(self) -> None:
        pass


def test_unparseable_step_is_never_executed_and_replanned():
    env = make_env("table_clear")
    backend = GarbledFirstAnswerBackendForTest(OracleBackend(env), garbled=1)
    result = run_episode(env, backend, HELDOUT_SEEDS[7])
    assert result.success and result.replans == 1
    first = result.steps[0]
    assert first.outcome == "failed" and first.attempts == 0 and first.goal["status"] == "unknown"
    assert first.goal_correct is False
    # ... and a model that never recovers hits the re-plan limit instead of looping.
    stubborn = GarbledFirstAnswerBackendForTest(OracleBackend(env), garbled=100)
    result = run_episode(env, stubborn, HELDOUT_SEEDS[7], RunnerConfig(monitor=MonitorConfig(max_replans=2)))
    env.close()
    assert not result.success and "gave up" in result.stop_reason and result.planning_calls == 3


def test_frames_only_monitoring_closes_the_loop():
    """No simulator checker: every step is judged by the new frame against the predicted subgoal."""
    env = make_env("table_clear")
    result = run_episode(env, OracleBackend(env), HELDOUT_SEEDS[8], RunnerConfig(use_checker=False))
    env.close()
    assert result.success and result.replans == 0
    checks = [e for e in result.events if e["kind"] == "check"]
    assert checks and all("frame vs predicted subgoal" in e["why"] for e in checks)
    assert all(e["data"]["progress"] >= 0.5 for e in checks)
    assert result.steps[-1].reason == "the model says done (the executor has no task check)"
