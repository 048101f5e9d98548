"""Scripted expert: solves held-out episodes, labels stay truthful, mistakes are recovered."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs
from sim_envs.expert import ScriptedExpert, solve
from sim_envs.seeds import seeds_for


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_expert_solves_heldout_seeds(env_id: str) -> None:
    env = gym.make(env_id, resolution=64)
    for seed in seeds_for("heldout", 3, offset=50):
        env.reset(seed=seed)
        assert solve(env), f"{env_id} seed {seed}: skill-level solve failed"
        env.reset(seed=seed)
        assert ScriptedExpert(env).run(), f"{env_id} seed {seed}: low-level expert failed"


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_labels_follow_the_plan(env_id: str) -> None:
    env = gym.make(env_id, resolution=64)
    env.reset(seed=seeds_for("heldout", 1, offset=7)[0])
    u = env.unwrapped
    plan = u.ground_truth_plan()
    ex = ScriptedExpert(env)
    seen: list[int] = []
    done_at_label: dict[int, int] = {}
    while not ex.done:
        action, k, text = ex.next_action()
        assert action.shape == (4,) and action.dtype == np.float32 and env.action_space.contains(action)
        assert text == plan[k].text and ex.segment is not None and ex.segment.kind == "plan"
        if not seen or seen[-1] != k:
            seen.append(k)
        done_at_label.setdefault(k, u.steps_done())
        env.step(action)
    assert seen == list(range(len(plan))), "labels go through the plan steps in order, none skipped"
    # when the expert starts step k, exactly k steps are done
    assert all(done_at_label[k] == k for k in range(len(plan)))
    assert u.task_success()
    with pytest.raises(RuntimeError, match="done"):
        ex.next_action()


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_mistakes_are_recovered_and_labelled(env_id: str) -> None:
    env = gym.make(env_id, resolution=64)
    env.reset(seed=seeds_for("heldout", 1, offset=11)[0])
    u = env.unwrapped
    plan_texts = [s.text for s in u.ground_truth_plan()]
    ex = ScriptedExpert(env, mistake_rate=1.0, seed=0)
    kinds: set[str] = set()
    while not ex.done:
        action, k, text = ex.next_action()
        assert ex.segment is not None
        kinds.add(ex.segment.kind)
        if k == -1:
            assert ex.segment.kind in ("mistake", "recovery") and text
        else:
            assert text == plan_texts[k]
        env.step(action)
    assert ex.mistakes >= 3 and "mistake" in kinds
    assert u.task_success()


def test_expert_rejects_bad_arguments() -> None:
    env = gym.make("sim_envs/TableClear-v0", resolution=64)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="mistake_rate"):
        ScriptedExpert(env, mistake_rate=1.5)


@pytest.mark.parametrize("env_id", sim_envs.ENV_IDS)
def test_recorded_actions_replay_to_the_same_episode(env_id: str) -> None:
    """A dataset stores the expert's float32 actions; replaying them reproduces the episode."""
    seed = seeds_for("train", 1, offset=123)[0]
    env = gym.make(env_id, resolution=64)
    env.reset(seed=seed)
    ex = ScriptedExpert(env, mistake_rate=0.5, seed=seed)
    actions, last = [], None
    while not ex.done:
        a, _, _ = ex.next_action()
        actions.append(a.copy())
        last, *_ = env.step(a)
    assert env.unwrapped.task_success()
    replay = gym.make(env_id, resolution=64)
    replay.reset(seed=seed)
    for a in np.stack(actions).astype(np.float32):
        obs, *_ = replay.step(a)
    np.testing.assert_array_equal(obs["image"], last["image"])
    assert replay.unwrapped.task_success()
