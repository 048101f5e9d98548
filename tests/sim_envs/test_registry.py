"""Every registered id: gymnasium's check_env, and same seed -> same rollout."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim_envs
from sim_envs import TabletopEnv


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_check_env(env_id: str) -> None:
    env = gym.make(env_id, resolution=64)
    assert isinstance(env.unwrapped, TabletopEnv)
    assert env.spec is not None and env.spec.max_episode_steps and env.spec.max_episode_steps >= 200
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


def _rollout(env_id: str, seed: int, n: int = 40) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    env = gym.make(env_id, resolution=64)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    images, states = [obs["image"]], [obs["state"]]
    for _ in range(n):
        obs, *_ = env.step(env.action_space.sample())
        images.append(obs["image"])
        states.append(obs["state"])
    return images, states, env.unwrapped.instruction


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_same_seed_same_rollout(env_id: str) -> None:
    a_img, a_state, a_instr = _rollout(env_id, 1_000_003)
    b_img, b_state, b_instr = _rollout(env_id, 1_000_003)
    assert a_instr == b_instr
    for x, y in zip(a_img, b_img):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a_state, b_state):
        np.testing.assert_array_equal(x, y)
    c_img, _, _ = _rollout(env_id, 1_000_004, n=0)
    assert not np.array_equal(a_img[0], c_img[0]), "different seeds should give different scenes"


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_contract_members(env_id: str) -> None:
    env = gym.make(env_id)
    obs, info = env.reset(seed=5)
    u = env.unwrapped
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].dtype == np.float32
    assert u.task_name in ("table_clear", "fold_cloth", "sort_blocks")
    assert isinstance(u.instruction, str) and u.instruction
    assert u.camera.width == 96
    plan = u.ground_truth_plan()
    assert plan and all(s.goal is not None and s.text for s in plan)
    assert [s.index for s in plan] == list(range(len(plan)))
    names, targets = u.object_names(), u.target_names()
    assert len(set(names)) == len(names), "object names must be unique"
    for s in plan:
        assert s.goal.object in names
        assert s.goal.target is None or s.goal.target in targets
    assert u.steps_done() == 0 and not u.task_success()
    ps = u.privileged_state()
    assert ps["task_name"] == u.task_name and ps["num_steps"] == len(plan)
    json.dumps(ps)  # plain data: the oracle backend and reports serialise it
    assert set(ps["objects"]) == set(names) and set(ps["targets"]) >= set(targets) - set(names)
    np.testing.assert_array_equal(u.render(), obs["image"])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resolution"):
        gym.make("sim_envs/TableClear-v0", resolution=8)
    env = gym.make("sim_envs/TableClear-v0").unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.render()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0], dtype=np.float32))
