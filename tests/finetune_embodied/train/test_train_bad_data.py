"""Bad recordings reach training as clear errors (file + episode) or as counted, reported skips."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from finetune_embodied.datasets.episode import Episode
from finetune_embodied.datasets.lerobot_v3 import write_dataset
from finetune_embodied.datasets.validation import DatasetError
from finetune_embodied.train.config import load_config
from finetune_embodied.train.loop import train
from finetune_embodied.train.synthetic import synthetic_frames

CAM = "observation.images.front"


def _dataset(root, n_episodes=3, length=12):
    eps = []
    for i in range(n_episodes):
        frames = synthetic_frames(length, 32, seed=i)
        subtasks = ["pick up the red block"] * (length // 2) + ["place the red block in the bin"] * (length - length // 2)
        eps.append(Episode(task="put the red block in the bin", images={CAM: frames},
                           state=np.zeros((length, 5), np.float32), action=np.zeros((length, 4), np.float32),
                           subtasks=subtasks))
    return write_dataset(root, eps, fps=10)


def _tok_cfg(tmp_path, ds, *extra):
    return load_config(None, [
        "stage=tokenizer", f"data.path={ds}", "data.image_size=32", "model={channels: [16, 32], levels: [5, 5]}",
        "optim.batch_size=4", "optim.max_steps=2", "eval.max_samples=4", "data.heldout_fraction=0.34",
        f"checkpoint.dir={tmp_path / 'run'}", *extra,
    ])


def _drop_rows_of_episode(ds, episode_index):
    path = next((ds / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    ep = pc.equal(table.column("episode_index"), episode_index)
    first_of_ep = pc.and_(ep, pc.equal(table.column("frame_index"), 0))
    pq.write_table(table.filter(pc.invert(first_of_ep)), path)
    return path


def test_mismatched_lengths_raise_naming_file_and_episode(tmp_path):
    ds = _dataset(tmp_path / "ds")
    path = _drop_rows_of_episode(ds, 1)
    with pytest.raises(DatasetError) as err:
        train(_tok_cfg(tmp_path, ds), progress=False)
    assert "episode 1" in str(err.value) and str(path) in str(err.value)


def test_skip_policy_counts_and_reports_the_bad_episode(tmp_path):
    ds = _dataset(tmp_path / "ds")
    _drop_rows_of_episode(ds, 1)
    res = train(_tok_cfg(tmp_path, ds, "data.on_error=skip"), progress=False)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert "1 episode(s) skipped" in summary["data_report"]
    assert "skipped" in (res.run_dir / "data_report.txt").read_text()
    assert summary["train_samples"] + summary["eval_samples"] == 2 * 12  # the two good episodes, all frames


def test_corrupt_video_is_a_clear_error(tmp_path):
    ds = _dataset(tmp_path / "ds")
    video = next((ds / "videos").rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    with pytest.raises(DatasetError) as err:
        train(_tok_cfg(tmp_path, ds), progress=False)
    assert "episode" in str(err.value)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="info.json|does not exist|missing"):
        train(_tok_cfg(tmp_path, tmp_path / "nope"), progress=False)
