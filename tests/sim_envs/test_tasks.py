"""Task-specific behaviour: the instruction decides SortBlocks; FoldCloth geometry; TableClear variety."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401  (registers the ids)
from emu_guide.types import ActionGoal
from sim_envs.fold_cloth import fold_particles
from sim_envs.seeds import seeds_for


def test_sort_blocks_plan_follows_the_instruction() -> None:
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    modes = set()
    mappings = set()
    for seed in seeds_for("heldout", 25):
        env.reset(seed=seed)
        modes.add(env.mode)
        plan = env.ground_truth_plan()
        if env.mode == "sort":
            said = dict(re.findall(r"(\w+) blocks in the (\w+ bin)", env.instruction))
            assert said, env.instruction
            mappings.add(tuple(sorted(said.items())))
            for step in plan:
                if step.goal.verb == "place":
                    colour = env.item(step.goal.object).colour_name
                    assert step.goal.target == said[colour], (env.instruction, step.text)
        else:
            assert all(s.goal.verb in ("pick", "stack") for s in plan)
            bottom = env.item(env.stack_order[0]).colour_name
            assert f"{bottom}" in env.instruction.split("bottom")[0] + env.instruction
            assert plan[1].goal.target == env.stack_order[0]
    assert modes == {"sort", "stack"}
    assert len(mappings) > 3, "the colour -> bin mapping varies between episodes"


def test_stacking_builds_a_tower() -> None:
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    seed = next(s for s in seeds_for("heldout", 40) if env.reset(seed=s) and env.mode == "stack")
    env.reset(seed=seed)
    for step in env.ground_truth_plan():
        assert env.execute_skill(step.goal).success
    tops = [env.item(n).pos[2] for n in env.stack_order]
    assert all(b > a for a, b in zip(tops, tops[1:])), "each block rests higher than the one below"
    assert env.task_success()


def test_fold_is_a_reflection_onto_the_target() -> None:
    P = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [0.3, 0.0]])
    layer = np.zeros(4)
    flipped = np.zeros(4, dtype=bool)
    fold_particles(P, layer, flipped, p=np.array([0.3, 0.0]), q=np.array([0.1, 0.0]))  # line x = 0.2
    np.testing.assert_allclose(P[:, 0], [0.0, 0.1, 0.2, 0.1])
    assert flipped.tolist() == [False, False, False, True]
    assert layer[3] > layer[:3].max()


def test_fold_cloth_wrong_order_and_geometry() -> None:
    env = gym.make("sim_envs/FoldCloth-v0", resolution=64).unwrapped
    env.reset(seed=seeds_for("heldout", 1, offset=3)[0])
    plan = env.ground_truth_plan()
    area0 = np.ptp(env.P[:, 0]) * np.ptp(env.P[:, 1])
    # Folding the bottom first is a valid skill but not the plan's first step.
    res = env.execute_skill(ActionGoal("fold", "bottom", target="middle"))
    assert res.success and env.steps_done() == 0
    env.reset(seed=seeds_for("heldout", 1, offset=3)[0])
    for step in plan:
        env.execute_skill(step.goal)
    area1 = np.ptp(env.P[:, 0]) * np.ptp(env.P[:, 1])
    assert env.task_success()
    assert area1 < area0 / 6, "the folded shirt covers a fraction of the flat one"
    assert env.layer.max() >= 7


def test_table_clear_variety() -> None:
    env = gym.make("sim_envs/TableClear-v0", resolution=64).unwrapped
    kinds, instructions, styles, cams = set(), set(), set(), set()
    for seed in seeds_for("heldout", 12):
        env.reset(seed=seed)
        names = env.object_names()
        assert len(names) == 6 and len(env.ground_truth_plan()) == 12
        kinds |= {env.item(n).kind for n in names}
        instructions.add(env.instruction)
        styles.add(env.table_style)
        cams.add(round(float(env.camera.world_from_camera[0, 3]), 4))
        dests = {env.destination(n) for n in names}
        assert dests == {"rack", "tray", "bin"}
    assert len(kinds) >= 6 and len(instructions) >= 3 and len(styles) >= 3 and len(cams) >= 10


@pytest.mark.parametrize("task_id", ["sim_envs/TableClear-v0", "sim_envs/SortBlocks-v0"])
def test_name_vocabulary_covers_every_episode(task_id):
    env = gym.make(task_id)
    vocab = set(env.unwrapped.name_vocabulary())
    for seed in range(40):
        env.reset(seed=seed)
        assert set(env.unwrapped.object_names()) <= vocab
    env.close()
