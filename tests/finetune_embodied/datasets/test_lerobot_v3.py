from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import CAM

from finetune_embodied.datasets import DatasetError, LeRobotV3Reader, open_dataset, write_dataset
from finetune_embodied.datasets.lerobot_v3 import DEFAULT_DATA_PATH, DEFAULT_VIDEO_PATH


def test_roundtrip_many_episodes_per_file(tmp_path, episodes):
    root = write_dataset(tmp_path / "ds", episodes, fps=10, max_episodes_per_file=2)
    reader = open_dataset(root)
    assert isinstance(reader, LeRobotV3Reader)
    assert reader.num_episodes == 5 and reader.num_frames == sum(e.length for e in episodes)
    # 5 episodes, 2 per file -> 3 data files and 3 videos, episodes concatenated inside each.
    assert len(list((root / "data").glob("chunk-000/file-*.parquet"))) == 3
    assert len(list((root / "videos" / CAM).glob("chunk-000/file-*.mp4"))) == 3
    for got in reader.iter_episodes():
        want = episodes[got.episode_index]
        assert got.task == want.task
        np.testing.assert_array_equal(got.state, want.state)
        np.testing.assert_array_equal(got.action, want.action)
        assert got.subtasks == want.subtasks
        np.testing.assert_allclose(got.timestamp, np.arange(want.length) / 10, atol=1e-6)
        frames = got.images[CAM]
        assert frames.shape == want.images[CAM].shape
        # Lossy h264, but each frame must match its own source frame (not a neighbour's).
        err = np.abs(frames.astype(int) - want.images[CAM].astype(int)).mean(axis=(1, 2, 3))
        assert err.max() < 6, err
        src = want.images[CAM].astype(int)
        nearest = [int(np.argmin(np.abs(src - f.astype(int)).mean(axis=(1, 2, 3)))) for f in frames]
        assert nearest == list(range(want.length))


def test_a_reader_can_keep_only_the_first_episodes(tmp_path, episodes):
    root = write_dataset(tmp_path / "ds", episodes, fps=10, max_episodes_per_file=2)
    reader = open_dataset(root, first_episodes=3)
    assert reader.num_episodes == 3 and [e.episode_index for e in reader.iter_episodes(load_images=False)] == [0, 1, 2]
    assert reader.num_frames == sum(e.length for e in episodes[:3])
    assert open_dataset(root, first_episodes=0).num_episodes == 5  # 0: all of them
    with pytest.raises(DatasetError, match="first_episodes=6, but the dataset has 5 episodes"):
        open_dataset(root, first_episodes=6)


def test_layout_matches_lerobot_v3(tmp_path, episodes):
    root = write_dataset(tmp_path / "ds", episodes, fps=15, max_episodes_per_file=3, robot_type="sim_tabletop")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" == DEFAULT_DATA_PATH
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" == DEFAULT_VIDEO_PATH
    assert info["total_episodes"] == 5 and info["total_tasks"] == 2 and info["splits"] == {"train": "0:5"}
    for key in ("chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "robot_type"):
        assert key in info
    feats = info["features"]
    assert feats[CAM]["dtype"] == "video" and feats[CAM]["shape"] == [64, 64, 3]
    assert feats[CAM]["names"] == ["height", "width", "channels"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [5], "names": ["s0", "s1", "s2", "s3", "s4"]}
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index", "subtask_index"):
        assert feats[key]["shape"] == [1]

    # Every non-video feature is a data column; no other columns.
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert sorted(data.column_names) == sorted(k for k, f in feats.items() if f["dtype"] != "video")
    state_type = data.schema.field("observation.state").type
    assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == 5
    assert state_type.value_type == pa.float32()
    assert data.column("index").to_pylist() == list(range(data.num_rows))

    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == [0, 1, 2, 3, 4]
    for col in ("tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index",
                f"videos/{CAM}/chunk_index", f"videos/{CAM}/file_index", f"videos/{CAM}/from_timestamp",
                f"videos/{CAM}/to_timestamp", "meta/episodes/chunk_index", "meta/episodes/file_index",
                "stats/action/mean", f"stats/{CAM}/std"):
        assert col in eps[0], col
    # Episode 3 is the first of the second file: its video starts at t=0 again, row range continues.
    assert eps[3]["data/file_index"] == 1 and eps[3][f"videos/{CAM}/from_timestamp"] == 0.0
    assert eps[2][f"videos/{CAM}/from_timestamp"] == pytest.approx((8 + 9) / 15)
    assert eps[3]["dataset_from_index"] == eps[2]["dataset_to_index"] == 8 + 9 + 10

    # tasks.parquet / subtasks.parquet: pandas-style index column, as `DataFrame(..., index=Index(name=...))` writes.
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    assert tasks.to_pylist() == [{"task_index": 0, "task": "clear the table"}, {"task_index": 1, "task": "sort the blocks"}]
    subtasks = pq.read_table(root / "meta/subtasks.parquet").to_pylist()
    assert [s["subtask"] for s in subtasks] == ["pick up the red cup", "place the red cup in the bin"]

    stats = json.loads((root / "meta/stats.json").read_text())
    all_actions = np.concatenate([e.action for e in episodes])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["max"], all_actions.max(0), rtol=1e-6)
    assert stats["action"]["count"] == [len(all_actions)]
    assert np.asarray(stats[CAM]["mean"]).shape == (3, 1, 1)


def test_writer_refuses_bad_input(tmp_path, episodes):
    from finetune_embodied.datasets import LeRobotV3Writer

    with pytest.raises(FileExistsError):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "f").write_text("1")
        write_dataset(tmp_path / "x", episodes, fps=10)
    w = LeRobotV3Writer(tmp_path / "y", 10, {"front": (64, 64)}, ["a"] * 5, ["b"] * 4)
    with pytest.raises(ValueError, match="state/action dims"):
        ep = episodes[0]
        ep.state = ep.state[:, :3]
        w.add_episode(ep)
    with pytest.raises(ValueError, match="no episodes"):
        w.close()
    # An aborted writer leaves no info.json: never mistaken for a dataset.
    with pytest.raises(RuntimeError), LeRobotV3Writer(tmp_path / "z", 10, {"front": (64, 64)}, ["a"] * 5, ["b"] * 4) as w2:
        w2.add_episode(episodes[1])
        raise RuntimeError("boom")
    with pytest.raises(DatasetError, match="info.json missing"):
        open_dataset(tmp_path / "z")
