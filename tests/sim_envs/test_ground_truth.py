"""Ground truth: the plan executes, steps complete in order, subgoal images match what happens."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_plan_executes_in_order_and_matches_subgoals(env_id: str) -> None:
    env = gym.make(env_id, resolution=64).unwrapped
    env.reset(seed=1_000_020)
    plan = env.ground_truth_plan()
    subgoals = env.subgoal_images()
    assert len(subgoals) == len(plan)
    assert env.steps_done() == 0, "computing subgoal images must not change the episode"
    for k, step in enumerate(plan):
        assert not env.check_step(step.goal), f"step {k} satisfied before it ran"
        res = env.execute_skill(step.goal)
        assert res.success, f"step {k} {step.text!r}: {res.reason}"
        assert env.steps_done() == k + 1, f"after {step.text!r} steps_done={env.steps_done()}"
        diff = np.abs(res.frames[-1].astype(int) - subgoals[k].astype(int)).mean()
        assert diff < 1.0, f"subgoal image {k} differs from the executed frame by {diff:.2f}"
    assert env.task_success()


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_steps_only_count_in_order(env_id: str) -> None:
    env = gym.make(env_id, resolution=64).unwrapped
    env.reset(seed=1_000_021)
    plan = env.ground_truth_plan()
    assert env.steps_done() == 0
    # Doing nothing useful (random motion with the gripper open) completes nothing.
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.uniform(-1, 1, 4).astype(np.float32)
        a[3] = -1.0
        env.step(a)
    assert env.steps_done() == 0
    assert not env.task_success()
    assert len(plan) >= 4
