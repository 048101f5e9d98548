"""The oracle backend on real sim_envs episodes: the right step, the exact subgoal image, re-derivation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401  (registers the environments)
from emu_guide.types import DecodeMode, Frame
from model_runtime.backends.base import BackendError, DecodeOptions, load_backend
from model_runtime.backends.oracle import OracleBackend
from sim_envs.seeds import HELDOUT_SEEDS

SEED = HELDOUT_SEEDS[3]


@pytest.fixture()
def env():
    e = gym.make("sim_envs/TableClear-v0")
    e.reset(seed=SEED)
    yield e
    e.close()


def _frame(env) -> Frame:
    return Frame(env.unwrapped.render(), frame_id=env.unwrapped.camera.frame_id)


def test_first_step_matches_ground_truth(env):
    backend = load_backend("oracle", env=env)
    assert backend.name == "oracle" and backend.image_size == (96, 96)
    step = backend.next_step(_frame(env), env.unwrapped.instruction, [], DecodeOptions())
    gt = env.unwrapped.ground_truth_plan()[0]
    assert step.text == gt.text and step.goal == gt.goal and not step.is_final
    assert step.decode_mode == DecodeMode.ORACLE
    np.testing.assert_array_equal(step.subgoal_image, env.unwrapped.subgoal_images()[0])
    assert set(step.timings_ms) >= {"text", "image", "total"}


@pytest.mark.parametrize("replan", ["current", "reset"])
def test_walks_the_plan_to_the_final_step(env, replan):
    sim = env.unwrapped
    backend = OracleBackend(env, replan=replan)
    gt_images = sim.subgoal_images()
    history = []
    for k in range(len(sim.ground_truth_plan())):
        step = backend.next_step(_frame(env), sim.instruction, history)
        np.testing.assert_array_equal(step.subgoal_image, gt_images[k])
        assert sim.execute_skill(step.goal).success
        history.append(step)
    final = backend.next_step(_frame(env), sim.instruction, history)
    assert final.is_final and final.subgoal_image is None
    assert sim.task_success()


def test_rederives_after_a_dropped_object(env):
    """A place whose object fell: the current-state oracle re-issues the pick, the reset one cannot."""
    sim = env.unwrapped
    plan = sim.ground_truth_plan()
    assert sim.execute_skill(plan[0].goal).success  # pick up item 0
    # The object slips: open the gripper where it is (above the table, not over a receptacle).
    env.unwrapped.step(np.array([0.0, 0.0, 0.0, -1.0], dtype=np.float32))
    assert sim.steps_done() == 1 and not sim.is_holding()
    step = OracleBackend(env, replan="current").next_step(_frame(env), sim.instruction, [plan[0]])
    assert step.goal.verb == "pick" and step.goal.object == plan[1].goal.object
    assert step.text == plan[0].text
    assert sim.execute_skill(step.goal).success  # the re-issued pick works from here
    stale = OracleBackend(env, replan="reset").next_step(_frame(env), sim.instruction, [plan[0]])
    assert stale.goal.verb == "place"  # the reset plan just goes on


def test_bad_inputs_raise_backend_error(env):
    with pytest.raises(BackendError, match="needs the simulation environment"):
        load_backend("oracle")
    with pytest.raises(BackendError, match="replan"):
        OracleBackend(env, replan="sometimes")
    with pytest.raises(BackendError, match="has execute_skill: a guidance environment needs .*ground_truth_plan"):
        OracleBackend(object())  # names what the oracle needs (emu_guide/env_protocol.py)
    with pytest.raises(BackendError, match="replan_mode"):
        OracleBackend(env, replan_mode="current")  # a typo is named, not ignored
    assert OracleBackend(env, model_path="unused", device="cpu").name == "oracle"
    backend = OracleBackend(env)
    with pytest.raises(BackendError, match="64x64"):
        backend.next_step(Frame(np.zeros((64, 64, 3), np.uint8)), "x", [])
    with pytest.raises(BackendError, match="Frame"):
        backend.next_step(np.zeros((96, 96, 3), np.uint8), "x", [])  # type: ignore[arg-type]
