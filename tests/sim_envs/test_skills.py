"""Skill interface: errors name the valid choices; skills run through low-level steps."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs
from emu_guide.types import ActionGoal
from sim_envs import SkillError


@pytest.fixture
def table() -> sim_envs.TabletopEnv:
    env = gym.make("sim_envs/TableClear-v0", resolution=64).unwrapped
    env.reset(seed=1_000_010)
    return env


def test_invalid_verb_object_target(table: sim_envs.TabletopEnv) -> None:
    name = table.object_names()[0]
    with pytest.raises(SkillError, match="valid verbs: pick, place"):
        table.execute_skill(ActionGoal("fold", name))
    with pytest.raises(SkillError, match="valid objects: .*" + name):
        table.execute_skill(ActionGoal("pick", "golden teapot"))
    with pytest.raises(SkillError, match="valid targets: .*rack"):
        table.execute_skill(ActionGoal("place", name, target="sofa"))
    with pytest.raises(SkillError, match="valid targets"):
        table.check_step(ActionGoal("place", name))
    with pytest.raises(SkillError, match="ActionGoal"):
        table.execute_skill("pick the cup")  # type: ignore[arg-type]
    assert isinstance(SkillError("x"), ValueError)


def test_names_are_normalised(table: sim_envs.TabletopEnv) -> None:
    name = table.object_names()[0]
    res = table.execute_skill(ActionGoal("pick", "The " + name.upper()))
    assert res.success
    assert table.privileged_state()["held"] == name


def test_skill_runs_low_level_and_fails_cleanly(table: sim_envs.TabletopEnv) -> None:
    a, b = table.object_names()[:2]
    res = table.execute_skill(ActionGoal("place", a, target="rack"))
    assert not res.success and "not holding" in res.reason
    res = table.execute_skill(ActionGoal("pick", a))
    assert res.success and len(res.frames) >= 4
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in res.frames)
    np.testing.assert_array_equal(res.frames[-1], table.render())
    res = table.execute_skill(ActionGoal("pick", b))
    assert not res.success and "already holding" in res.reason


def test_wrong_receptacle_is_not_success(table: sim_envs.TabletopEnv) -> None:
    name = table.object_names()[0]
    dest = table.destination(name)
    wrong = next(t for t in table.target_names() if t != dest)
    table.execute_skill(ActionGoal("pick", name))
    res = table.execute_skill(ActionGoal("place", name, target=wrong))
    assert res.success  # the skill did what it was asked ...
    assert table.privileged_state()["objects"][name]["location"] == wrong
    assert not table.check_step(ActionGoal("place", name, target=dest))  # ... which is not the plan's step
    assert not table.check_step(ActionGoal("pick", name))


def test_fold_cloth_skill_errors() -> None:
    env = gym.make("sim_envs/FoldCloth-v0", resolution=64).unwrapped
    env.reset(seed=1_000_000)
    with pytest.raises(SkillError, match="valid verbs: fold"):
        env.execute_skill(ActionGoal("pick", "left sleeve"))
    with pytest.raises(SkillError, match="valid objects: .*left sleeve"):
        env.execute_skill(ActionGoal("fold", "collar flap", target="centre"))
    with pytest.raises(SkillError, match="valid target for the left sleeve: centre"):
        env.execute_skill(ActionGoal("fold", "left sleeve", target="bottom"))
    assert env.execute_skill(ActionGoal("fold", "left sleeve", target="center")).success  # US spelling


def test_sort_blocks_skill_errors() -> None:
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    for seed in range(1_000_000, 1_000_010):
        env.reset(seed=seed)
        name = env.object_names()[0]
        with pytest.raises(SkillError, match="valid targets: " + ", ".join(t for t in env.target_names() if t != name)):
            env.check_step(ActionGoal("place", name, target="floor"))
        with pytest.raises(SkillError, match="valid verbs: pick, place, stack"):
            env.check_step(ActionGoal("fold", name))
