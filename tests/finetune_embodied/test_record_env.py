"""`emu-guide record --env`: expert episodes of any guidance-protocol env -> a labelled LeRobot v3 dataset."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_embodied.datasets import open_dataset
from finetune_embodied.record_env import EnvRecordConfig, make_protocol_env, record_env, record_env_episode
from sim_envs.seeds import HELDOUT_SEEDS, TRAIN_SEEDS

PANEL = "tests.planner.envs_for_test.button_panel:make"


def test_env_whose_skills_step_gives_a_frame_per_step_labelled_with_its_sentence():
    """TableClear's skills act through env.step: every low-level step is a frame; the labels change
    exactly at the plan's steps, in order, and the last frame shows the task done."""
    env = make_protocol_env("sim_envs/TableClear-v0", 32)
    try:
        data, summary = record_env_episode(env, TRAIN_SEEDS[0])
        plan = [s.text for s in env.unwrapped.ground_truth_plan()]
    finally:
        env.close()
    assert summary["success"] and summary["frames"] == len(data["images"]) == len(data["subtasks"])
    assert summary["frames"] > 10 * len(plan)  # low-level frames, not one per skill
    changes = [t for i, t in enumerate(data["subtasks"]) if i == 0 or t != data["subtasks"][i - 1]]
    assert changes == plan
    assert data["state"].shape == (summary["frames"], 5) and data["action"].shape == (summary["frames"], 4)
    assert not data["action"][-1].any()  # the hold action after the last frame


def test_recorded_dataset_reads_back_with_step_labels_and_names(tmp_path):
    """A toy env whose skills never call step() gives one frame per skill; several envs go in one
    dataset only when their state columns agree; held-out seeds are refused."""
    out = tmp_path / "panel"
    summary = record_env(EnvRecordConfig(out=str(out), envs=(PANEL,), episodes=2, resolution=48), progress=False)
    assert summary["episodes_in_dataset"] == 2 and not summary["episodes_excluded"]
    reader = open_dataset(out)
    episodes = list(reader.iter_episodes(load_images=True))
    assert [e.length for e in episodes] == [5, 5]  # reset frame + 4 skills (3 presses and the lever)
    ep = episodes[0]
    assert ep.subtasks[-1] == "pull the lever" and ep.subtasks[1].startswith("press the ")
    assert ep.task.startswith("press the ") and ep.images[reader.camera_keys[0]].shape == (5, 48, 48, 3)
    # the last frame shows the lever pulled (white): the frame was rendered after the skill
    assert np.all(ep.images[reader.camera_keys[0]][-1][36, 24] > 200)
    with pytest.raises(ValueError, match="not in the train split"):
        EnvRecordConfig(out=str(tmp_path / "x"), envs=(PANEL,), seeds=(HELDOUT_SEEDS[0],))
    with pytest.raises(ValueError, match="differ from the first env"):
        record_env(EnvRecordConfig(out=str(tmp_path / "mixed"), envs=(PANEL, "sim_envs/TableClear-v0"), episodes=1,
                                   resolution=48), progress=False)
    assert not (tmp_path / "mixed").exists()


def test_cli_records_an_import_path(tmp_path, capsys):
    from emu_guide.cli import main

    assert main(["record", "--env", PANEL, "--episodes", "1", "--resolution", "32", "--out", str(tmp_path / "d"),
                 "--no-progress"]) == 0
    assert "1 in dataset" in capsys.readouterr().out
    assert main(["record", "--env", "no_such_module:make", "--out", str(tmp_path / "e"), "--no-progress"]) == 2
    assert "cannot load the environment" in capsys.readouterr().out
