"""The Meta-World example (examples/metaworld): its scripted experts through the skill interface,
and the oracle through the guidance loop. Runs only with the [mujoco] extra installed."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("mujoco", reason="the [mujoco] extra is not installed (pip install -e '.[mujoco]')")
pytest.importorskip("metaworld", reason="the [mujoco] extra is not installed (pip install -e '.[mujoco]')")

import numpy as np  # noqa: E402

from emu_guide.env_protocol import guidance_env  # noqa: E402
from emu_guide.types import ActionGoal  # noqa: E402
from examples.metaworld import metaworld_guidance as mw  # noqa: E402
from model_runtime.backends.oracle import OracleBackend  # noqa: E402
from planner.envs import make_env  # noqa: E402
from planner.parse import Vocabulary, parse  # noqa: E402
from planner.runner import run_episode  # noqa: E402
from sim_envs.seeds import HELDOUT_SEEDS  # noqa: E402

SEEDS = 20
MAKERS = {"pick-place": "make_pick_place", "drawer-open": "make_drawer_open",
          "button-press-topdown": "make_button_press"}


@pytest.fixture(scope="module", params=list(mw.TASKS))
def env(request):
    e = make_env(f"examples.metaworld.metaworld_guidance:{MAKERS[request.param]}", resolution=64)
    yield e
    e.close()


def test_the_expert_succeeds_through_the_skill_interface(env):
    """Each ground-truth step through execute_skill, on 20 held-out seeds: >= 95% task success,
    each step confirmed by the checker and counted by steps_done."""
    sim = guidance_env(env)
    wins = 0
    for seed in HELDOUT_SEEDS[:SEEDS]:
        env.reset(seed=seed)
        plan = sim.ground_truth_plan()
        ok = True
        for k, step in enumerate(plan):
            assert not sim.check_step(step.goal), f"seed {seed}: {step.text!r} done before it ran"
            result = sim.execute_skill(step.goal)
            ok = ok and result.success and sim.check_step(step.goal) and sim.steps_done() == k + 1
        wins += ok and sim.task_success()
    assert wins >= 0.95 * SEEDS, f"{sim.task_name}: expert {wins}/{SEEDS}"


def test_frames_camera_and_refusals(env):
    sim = guidance_env(env)
    env.reset(seed=HELDOUT_SEEDS[0])
    frame = sim.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert (sim.camera.width, sim.camera.height) == (64, 64)
    u, v = sim.camera.project(sim._sim.obj[None])[0]  # the object projects into the frame
    assert 0 <= u < 64 and 0 <= v < 64
    bad = sim.execute_skill(ActionGoal("pick", "teapot", step_index=0))
    assert not bad.success and "its skills" in bad.reason
    if sim.task == "pick-place":
        early = sim.execute_skill(ActionGoal("place", "puck", target="goal"))
        assert not early.success and "pick up the puck first" in early.reason
    with pytest.raises(TypeError, match="cannot be deep-copied"):
        copy.deepcopy(sim)


def test_the_parser_reads_every_plan_sentence(env):
    sim = guidance_env(env)
    env.reset(seed=HELDOUT_SEEDS[0])
    vocab = Vocabulary.from_env(env)
    for step in sim.ground_truth_plan():
        goal = parse(step.text, vocab).to_goal()
        assert (goal.verb, goal.object, goal.target, goal.status.value) == (
            step.goal.verb, step.goal.object, step.goal.target, "ok"), step.text


def test_the_oracle_succeeds_through_the_loop(env):
    sim = guidance_env(env)
    oracle = OracleBackend(env)
    for seed in HELDOUT_SEEDS[:2]:
        result = run_episode(env, oracle, seed)
        assert result.success and result.all_steps_correct, (seed, result.stop_reason)
        assert result.completed_steps == len(sim.ground_truth_plan())
    assert not oracle.copyable and "cannot be deep-copied" in oracle.copy_error  # it said why it fell back


def test_recorded_expert_episodes_label_and_read_back(tmp_path):
    """`emu-guide record --env` on pick-place: a frame per env step, each labelled with its plan
    sentence, the state named by the adapter; the labeller finds both step ends without the labels."""
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.labelling import label_dataset
    from finetune_embodied.record_env import EnvRecordConfig, record_env
    from finetune_embodied.train.config import LabelConfig

    out = tmp_path / "pp"
    summary = record_env(EnvRecordConfig(out=str(out), envs=("examples.metaworld.metaworld_guidance:make_pick_place",),
                                         episodes=2, resolution=32), progress=False)
    assert summary["episodes_in_dataset"] == 2
    reader = open_dataset(out)
    assert reader.state_names() == mw.STATE_NAMES
    ep = reader.episode(0, load_images=False)
    assert ep.length > 30 and ep.subtasks[0] == "pick up the puck" and ep.subtasks[-1] == "place the puck at the goal"
    report = label_dataset(reader, LabelConfig(), None, only_missing=False)
    assert report.columns.startswith("gripper=gripper_gap,prev_gripper_gap position=hand_x,hand_y,hand_z")
    assert report.precision == 1.0 and report.recall == 1.0, report.summary()
