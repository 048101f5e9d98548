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
        # The subgoal image is the frame the executed step ends on, exactly (same state, same renderer).
        np.testing.assert_array_equal(res.frames[-1], subgoals[k], err_msg=f"subgoal image {k}")
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


def test_subgoal_images_mid_episode_leave_state_alone() -> None:
    env = gym.make("sim_envs/TableClear-v0", resolution=64).unwrapped
    env.reset(seed=1_000_022)
    env.execute_skill(env.ground_truth_plan()[0].goal)
    before, state_before = env.render(), env.privileged_state()
    images = env.subgoal_images()  # computed now, from the reset state
    np.testing.assert_array_equal(env.render(), before)
    assert env.privileged_state() == state_before and env.steps_done() == 1
    ref = gym.make("sim_envs/TableClear-v0", resolution=64).unwrapped
    ref.reset(seed=1_000_022)
    for a, b in zip(images, ref.subgoal_images()):
        np.testing.assert_array_equal(a, b)
