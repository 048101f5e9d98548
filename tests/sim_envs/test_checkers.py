"""The step checkers on near-misses: a fold just outside its tolerance, a tower in the wrong order,
an item in the wrong receptacle. Each state is one the checker must call NOT done, next to the
state it must call done."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401  (registers the ids)
from emu_guide.types import ActionGoal
from sim_envs.fold_cloth import CHECK_TOL
from sim_envs.seeds import seeds_for


@pytest.fixture(scope="module")
def cloth():
    env = gym.make("sim_envs/FoldCloth-v0", resolution=64).unwrapped
    yield env
    env.close()


def test_fold_tolerance_is_two_centimetres_and_strict(cloth):
    assert CHECK_TOL == 0.02
    cloth.reset(seed=seeds_for("heldout", 1, offset=5)[0])
    step = cloth.ground_truth_plan()[0]
    part = step.goal.object
    assert not cloth.check_step(step.goal)  # nothing folded yet
    assert cloth.execute_skill(step.goal).success and cloth.check_step(step.goal)
    idx, target = cloth._tracked[part], np.asarray(cloth._target_points[part], dtype=float)
    direction = np.array([0.6, 0.8])
    for dist, done in ((0.0, True), (0.019, True), (0.0199, True), (0.0201, False), (0.021, False), (0.05, False)):
        cloth.P[idx] = target + dist * direction
        assert cloth.check_step(step.goal) is done, dist
    cloth.P[idx] = target + 0.5 * CHECK_TOL * direction
    assert cloth.check_step(step.goal)
    cloth.grasp = 0  # the cloth still held: a fold in progress is not done
    try:
        assert not cloth.check_step(step.goal)
    finally:
        cloth.grasp = None


def test_fold_steps_done_and_task_success_need_the_last_fold(cloth):
    cloth.reset(seed=seeds_for("heldout", 1, offset=6)[0])
    plan = cloth.ground_truth_plan()
    for i, step in enumerate(plan):
        assert cloth.steps_done() == i and not cloth.task_success()
        assert cloth.execute_skill(step.goal).success
    assert cloth.steps_done() == len(plan) and cloth.task_success()
    last = plan[-1].goal
    idx = cloth._tracked[last.object]
    cloth.P[idx] = np.asarray(cloth._target_points[last.object]) + np.array([0.03, 0.0])  # undone after the fact
    assert cloth.steps_done() == len(plan)  # progress is latched
    assert not cloth.task_success()  # ...but the final state must still be right


def _stack_episode(env):
    for seed in seeds_for("heldout", 60):
        env.reset(seed=seed)
        if env.mode == "stack" and len(env.stack_order) >= 3:
            return seed
    pytest.skip("no 3-block stacking episode among the first 60 held-out seeds")


def test_stack_in_the_wrong_order_is_not_done():
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    seed = _stack_episode(env)
    a, b, c = env.stack_order[:3]  # a at the bottom
    on = lambda x, y: ActionGoal("stack", x, target=y)  # noqa: E731
    # b on a, c on b is the plan; build it upside down: b on c, then a on b
    assert env.execute_skill(ActionGoal("pick", b)).success
    res = env.execute_skill(on(b, c))  # the skill runs, and its own check says it is no valid stack
    assert not res.success and "check failed" in res.reason
    assert env.item(b).location == c  # it IS resting on c...
    assert not env.check_step(on(b, a))  # ...which is not where it belongs
    assert not env.check_step(on(b, c))  # nor a stack: c itself is not in its place (on b)
    assert env.execute_skill(ActionGoal("pick", a)).success
    assert not env.execute_skill(on(a, b)).success
    assert env.item(a).location == b
    assert not env.check_step(on(a, b))  # b is not in its place, so a on b counts for nothing
    assert env.steps_done() == 1 and not env.task_success()  # only "pick b" (latched while b was held)
    # the right order from the same start
    env.reset(seed=seed)
    assert env.execute_skill(ActionGoal("pick", b)).success and env.execute_skill(on(b, a)).success
    assert env.check_step(on(b, a)) and env.check_step(ActionGoal("pick", b))  # pick: b is where it belongs
    assert env.execute_skill(ActionGoal("pick", c)).success
    assert env.check_step(ActionGoal("pick", c)) and not env.check_step(on(c, b))  # held, not yet placed
    assert env.execute_skill(on(c, b)).success
    assert env.check_step(on(c, b))
    env.close()


def test_a_tower_on_a_misplaced_base_is_not_done():
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    _stack_episode(env)
    a, b, c = env.stack_order[:3]
    on = lambda x, y: ActionGoal("stack", x, target=y)  # noqa: E731
    # c on b while b still stands on the table (b's own step not done): c's step is not done
    assert env.execute_skill(ActionGoal("pick", c)).success
    assert not env.execute_skill(on(c, b)).success
    assert env.item(c).location == b and env.item(b).location == "table"
    assert not env.check_step(on(c, b))
    # the bottom block of the tower must stand on the table
    assert env.item(a).location == "table"
    env.close()


def test_sort_into_the_wrong_bin_is_not_done():
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    for seed in seeds_for("heldout", 30):
        env.reset(seed=seed)
        if env.mode == "sort":
            break
    step = next(s for s in env.ground_truth_plan() if s.goal.verb == "place")
    obj, right = step.goal.object, step.goal.target
    wrong = next(t for t in env.target_names() if t != right and "bin" in t)
    assert env.execute_skill(ActionGoal("pick", obj)).success
    assert env.check_step(ActionGoal("pick", obj))  # held
    assert env.execute_skill(ActionGoal("place", obj, target=wrong)).success
    assert not env.check_step(step.goal) and env.check_step(ActionGoal("place", obj, target=wrong))
    assert not env.check_step(ActionGoal("pick", obj))  # not held and not where it belongs
    assert not env.task_success()
    env.close()


def test_table_clear_wrong_receptacle_and_held_item():
    env = gym.make("sim_envs/TableClear-v0", resolution=64).unwrapped
    env.reset(seed=seeds_for("heldout", 1, offset=2)[0])
    plan = env.ground_truth_plan()
    pick, place = plan[0].goal, plan[1].goal
    wrong = next(t for t in env.target_names() if t != place.target)
    assert not env.check_step(pick) and not env.check_step(place)
    assert env.execute_skill(pick).success
    assert env.check_step(pick) and not env.check_step(place)
    assert env.steps_done() == 1 and not env.task_success()
    assert env.execute_skill(ActionGoal("place", place.object, target=wrong)).success
    assert not env.check_step(place) and env.check_step(ActionGoal("place", place.object, target=wrong))
    assert not env.check_step(pick)  # neither held nor in its destination
    assert env.steps_done() == 1
    env.close()


def test_table_clear_success_needs_empty_gripper():
    env = gym.make("sim_envs/TableClear-v0", resolution=64).unwrapped
    env.reset(seed=seeds_for("heldout", 1, offset=4)[0])
    plan = env.ground_truth_plan()
    for step in plan:
        assert env.execute_skill(step.goal).success
    assert env.task_success() and env.steps_done() == len(plan)
    assert env.execute_skill(ActionGoal("pick", plan[-1].goal.object)).success  # take the last one out again
    assert env.steps_done() == len(plan) and not env.task_success()
    env.close()


def test_a_tower_whose_bottom_block_is_not_on_the_table_is_not_done():
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    _stack_episode(env)
    a, b, c = env.stack_order[:3]
    on = lambda x, y: ActionGoal("stack", x, target=y)  # noqa: E731
    assert env.execute_skill(ActionGoal("pick", a)).success
    env.execute_skill(on(a, c))  # the bottom block put on another block
    assert env.item(a).location == c
    assert env.execute_skill(ActionGoal("pick", b)).success
    env.execute_skill(on(b, a))
    assert env.item(b).location == a  # b rests on a, as the plan says...
    assert not env.check_step(on(b, a))  # ...but a does not stand on the table
    env.close()


def test_sorted_then_disturbed_is_not_success():
    env = gym.make("sim_envs/SortBlocks-v0", resolution=64).unwrapped
    for seed in seeds_for("heldout", 30):
        env.reset(seed=seed)
        if env.mode == "sort":
            break
    plan = env.ground_truth_plan()
    for step in plan:
        assert env.execute_skill(step.goal).success
    assert env.task_success()
    last = plan[-1].goal
    assert env.execute_skill(ActionGoal("pick", last.object)).success
    assert env.steps_done() == len(plan) and not env.task_success()  # held at the end
    wrong = next(t for t in env.target_names() if t != last.target and "bin" in t)
    env.execute_skill(ActionGoal("place", last.object, target=wrong))
    assert env.held is None and env.steps_done() == len(plan)
    assert not env.task_success()  # put down, but in the wrong bin
    env.close()
