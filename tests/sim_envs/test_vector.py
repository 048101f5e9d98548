"""Gymnasium vector envs (SyncVectorEnv, explicit NEXT_STEP autoreset)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs
from sim_envs.base import TabletopEnv


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_sync_vector_env_autoreset(env_id: str) -> None:
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, resolution=64, max_episode_steps=4) for _ in range(2)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    obs, _ = envs.reset(seed=[1_000_000, 1_000_001])
    assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (2, 5)
    assert not np.array_equal(obs["image"][0], obs["image"][1])
    home = np.asarray(TabletopEnv.HOME, dtype=np.float32)
    actions = np.tile(np.array([[1.0, 1.0, -1.0, -1.0]], dtype=np.float32), (2, 1))
    truncated = np.zeros(2, dtype=bool)
    for _ in range(4):
        obs, reward, terminated, truncated, _ = envs.step(actions)
        assert reward.shape == (2,)
    assert truncated.all(), "max_episode_steps=4 truncates both envs"
    assert not np.allclose(obs["state"][:, :3], home)
    obs, reward, terminated, truncated, _ = envs.step(actions)  # NEXT_STEP: this step resets
    np.testing.assert_allclose(obs["state"][:, :3], np.tile(home, (2, 1)), atol=1e-6)
    assert not truncated.any() and (reward == 0).all()
    envs.close()


def test_async_vector_env_matches_single_env() -> None:
    """Worker processes (fork) give the same observations as a single env with the same seed."""
    env_id = "sim_envs/SortBlocks-v0"
    envs = gym.vector.AsyncVectorEnv(
        [lambda: gym.make(env_id, resolution=64) for _ in range(2)],
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
    )
    obs, _ = envs.reset(seed=[1_000_000, 1_000_001])
    single = gym.make(env_id, resolution=64)
    ref, _ = single.reset(seed=1_000_001)
    np.testing.assert_array_equal(obs["image"][1], ref["image"])
    action = np.array([0.5, -0.5, -1.0, -1.0], dtype=np.float32)
    obs, *_ = envs.step(np.tile(action, (2, 1)))
    ref, *_ = single.step(action)
    np.testing.assert_array_equal(obs["image"][1], ref["image"])
    np.testing.assert_array_equal(obs["state"][1], ref["state"])
    envs.close()
