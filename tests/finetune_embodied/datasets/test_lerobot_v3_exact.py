"""The v3.0 writer and reader, value by value: row ranges and video time ranges at file
boundaries, chunk/file arithmetic and path templates, file roll-over by size, stats, the pandas-
indexed name tables, and errors that name the bad file, column or episode."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import CAM, make_episode

from finetune_embodied.datasets import (
    DatasetError,
    Episode,
    LeRobotV3Reader,
    LeRobotV3Writer,
    open_dataset,
    write_dataset,
)
from finetune_embodied.datasets.lerobot_v3 import _fixed_list_to_numpy, read_indexed_names, write_indexed_names


@pytest.fixture
def eps():
    # 8, 1 and 9 frames: a one-frame episode sits between two others in the same video file.
    return [make_episode(8, seed=0), make_episode(1, seed=1, task="sort the blocks"), make_episode(9, seed=2)]


def _episodes_meta(root) -> list[dict]:
    return pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()


def _set_info(root, **kw) -> None:
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    for k, v in kw.items():
        if v is ...:
            info.pop(k)
        else:
            info[k] = v
    path.write_text(json.dumps(info))


def test_row_and_time_ranges_at_episode_boundaries(tmp_path, eps):
    root = write_dataset(tmp_path / "ds", eps, fps=10)  # all three in one data file and one video
    meta = _episodes_meta(root)
    assert [(m["dataset_from_index"], m["dataset_to_index"]) for m in meta] == [(0, 8), (8, 9), (9, 18)]
    assert [m["length"] for m in meta] == [8, 1, 9]
    assert [(m[f"videos/{CAM}/from_timestamp"], m[f"videos/{CAM}/to_timestamp"]) for m in meta] == [
        (0.0, 0.8), (0.8, 0.9), (0.9, 1.8)]
    assert [m["tasks"] for m in meta] == [["clear the table"], ["sort the blocks"], ["clear the table"]]
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(18))
    assert data.column("episode_index").to_pylist() == [0] * 8 + [1] + [2] * 9
    assert data.column("frame_index").to_pylist() == list(range(8)) + [0] + list(range(9))
    assert data.column("task_index").to_pylist() == [0] * 8 + [1] + [0] * 9
    assert data.column("subtask_index").to_pylist() == [0] * 4 + [1] * 4 + [1] + [0] * 4 + [1] * 5
    np.testing.assert_allclose(data.column("timestamp").to_numpy()[9:], np.arange(9) / 10, atol=1e-7)

    reader = open_dataset(root)
    assert reader.num_frames == 18 and reader.episode_indices == [0, 1, 2]
    for i, want in enumerate(eps):
        got = reader.episode(i)
        assert got.length == want.length and got.task == want.task and got.subtasks == want.subtasks
        np.testing.assert_array_equal(got.state, want.state)
        np.testing.assert_array_equal(got.action, want.action)
        np.testing.assert_array_equal(got.timestamp, np.arange(want.length, dtype=np.float32) / 10)
        src = want.images[CAM].astype(int)
        nearest = [int(np.argmin(np.abs(src - f.astype(int)).mean(axis=(1, 2, 3)))) for f in got.images[CAM]]
        assert nearest == list(range(want.length)), i  # each frame its own, none from the next episode
        assert np.abs(got.images[CAM].astype(int) - src).mean() < 6
    assert reader.episode(2, load_images=False).images == {}


def test_chunks_and_files_roll_over_and_templates_resolve(tmp_path, eps):
    root = write_dataset(tmp_path / "ds", eps, fps=10, chunks_size=2, max_episodes_per_file=1)
    meta = _episodes_meta(root)
    assert [(m["data/chunk_index"], m["data/file_index"]) for m in meta] == [(0, 0), (0, 1), (1, 0)]
    assert [(m[f"videos/{CAM}/chunk_index"], m[f"videos/{CAM}/file_index"]) for m in meta] == [(0, 0), (0, 1), (1, 0)]
    # each file starts its video at t = 0 and its rows at the running dataset index
    assert [m[f"videos/{CAM}/from_timestamp"] for m in meta] == [0.0, 0.0, 0.0]
    assert [m["dataset_from_index"] for m in meta] == [0, 8, 9]
    reader = LeRobotV3Reader(root)
    assert reader.data_path(2) == root / "data/chunk-001/file-000.parquet"
    assert reader.data_path(1) == root / "data/chunk-000/file-001.parquet"
    assert reader.video_path(2, CAM) == root / f"videos/{CAM}/chunk-001/file-000.mp4"
    for p in (reader.data_path(i) for i in range(3)):
        assert p.is_file()
    assert [e.length for e in reader.iter_episodes()] == [8, 1, 9]
    with pytest.raises(KeyError, match="episode 3 not in .* \\(has 3 episodes\\)"):
        reader.data_path(3)
    # info.json without templates (or a null video_path): LeRobot's defaults
    _set_info(root, data_path=..., video_path=None)
    reader = LeRobotV3Reader(root)
    assert reader.video_path(2, CAM) == root / f"videos/{CAM}/chunk-001/file-000.mp4"
    assert reader.data_path(2) == root / "data/chunk-001/file-000.parquet"
    assert reader.episode(2).length == 9
    _set_info(root, data_path="d/{chunk_index}-{file_index}.parquet")
    assert LeRobotV3Reader(root).data_path(1) == root / "d/0-1.parquet"


def test_data_file_size_is_in_mebibytes(tmp_path, eps):
    # ~700 bytes of rows for 8 frames: 0.01 MB (10 KiB) holds all three episodes; at 0.0001 MB (105
    # bytes) episode 0 fills file 0, the one-frame episode 1 leaves file 1 under the limit, so episode 2
    # joins it (a file is checked before an episode is added).
    big = write_dataset(tmp_path / "big", eps, fps=10, data_files_size_in_mb=0.01)
    assert [m["data/file_index"] for m in _episodes_meta(big)] == [0, 0, 0]
    small = write_dataset(tmp_path / "small", eps, fps=10, data_files_size_in_mb=0.0001)
    assert [m["data/file_index"] for m in _episodes_meta(small)] == [0, 1, 1]
    info = json.loads((small / "meta/info.json").read_text())
    assert info["data_files_size_in_mb"] == 0.0001 and info["video_files_size_in_mb"] == 500
    assert info["total_frames"] == 18 and info["total_tasks"] == 2 and info["splits"] == {"train": "0:3"}
    assert info["features"][CAM]["info"]["video.codec"] == "h264" and info["features"][CAM]["info"]["video.fps"] == 10


def test_video_file_size_rolls_files_over_too(tmp_path, eps):
    # any video past video_files_size_in_mb on disk starts a new data file and video for the next
    # episode (8+ frames each: a one-frame episode may still sit in the encoder's buffer)
    three = [eps[0], eps[2], make_episode(10, seed=5)]
    root = write_dataset(tmp_path / "v", three, fps=10, video_files_size_in_mb=1e-6)
    meta = _episodes_meta(root)
    assert [m["data/file_index"] for m in meta] == [0, 1, 2]
    assert [m[f"videos/{CAM}/file_index"] for m in meta] == [0, 1, 2]
    assert [e.length for e in open_dataset(root).iter_episodes()] == [8, 9, 10]
    assert [m["data/file_index"] for m in _episodes_meta(write_dataset(tmp_path / "w", three, fps=10))] == [0, 0, 0]


def test_stats_are_exact(tmp_path):
    ep = make_episode(20, seed=3)
    root = write_dataset(tmp_path / "ds", [ep, make_episode(5, seed=4)], fps=10)
    stats = json.loads((root / "meta/stats.json").read_text())
    state = np.concatenate([ep.state, make_episode(5, seed=4).state]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(0), rtol=1e-6)
    assert stats["observation.state"]["count"] == [25]
    # images: at most 16 evenly spaced frames per episode, pixels in [0, 1] per channel, (C, 1, 1)
    assert stats[CAM]["count"] == [(16 + 5) * 64 * 64]
    pick = np.linspace(0, 19, 16).round().astype(int)
    px = np.concatenate([ep.images[CAM][pick].reshape(-1, 3), make_episode(5, seed=4).images[CAM].reshape(-1, 3)]) / 255.0
    np.testing.assert_allclose(np.asarray(stats[CAM]["mean"]).reshape(3), px.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(stats[CAM]["std"]).reshape(3), px.std(0), rtol=1e-6)
    ep_stats = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()[0]
    np.testing.assert_allclose(ep_stats["stats/action/max"], ep.action.max(0), rtol=1e-6)
    assert ep_stats["stats/action/count"] == [20] and ep_stats[f"stats/{CAM}/count"] == [16 * 64 * 64]


def test_writer_state_machine(tmp_path, eps):
    # Default: subtask labels are expected; the folder is claimed at once
    w = LeRobotV3Writer(tmp_path / "a", 10, {"front": (64, 64)}, ["s"] * 5, ["a"] * 4)
    assert (tmp_path / "a").is_dir() and list((tmp_path / "a").iterdir()) == []
    with pytest.raises(ValueError, match="Episode.subtasks must be set"):
        w.add_episode(Episode(task="t", images=eps[0].images, state=eps[0].state, action=eps[0].action))
    w.add_episode(eps[0])
    assert w.close() == tmp_path / "a" and w.close() == tmp_path / "a"  # a second close is a no-op
    with pytest.raises(RuntimeError, match="writer is closed"):
        w.add_episode(eps[1])
    with pytest.raises(ValueError, match="fps must be positive, got 0"):
        LeRobotV3Writer(tmp_path / "b", 0, {"front": (64, 64)}, ["s"] * 5, ["a"] * 4)
    w = LeRobotV3Writer(tmp_path / "c", 10, {"front": (32, 64)}, ["s"] * 5, ["a"] * 4)
    with pytest.raises(ValueError, match=r"observation.images.front: frames are \(64, 64\), dataset is \(32, 64\)"):
        w.add_episode(eps[0])
    w = LeRobotV3Writer(tmp_path / "d", 10, {"wrist": (64, 64)}, ["s"] * 5, ["a"] * 4)
    with pytest.raises(ValueError, match="episode cameras"):
        w.add_episode(eps[0])
    # aborted, then closed: still no metadata, never a dataset
    w = LeRobotV3Writer(tmp_path / "e", 10, {"front": (64, 64)}, ["s"] * 5, ["a"] * 4)
    w.add_episode(eps[0])
    w.abort()
    w.close()
    assert not (tmp_path / "e/meta/info.json").exists()
    # overwrite=True replaces a non-empty folder
    root = write_dataset(tmp_path / "a", eps[1:2], fps=10, overwrite=True)
    assert open_dataset(root).num_episodes == 1


def test_a_one_frame_episode_and_empty_ones(tmp_path, eps):
    root = write_dataset(tmp_path / "ds", eps[1:2], fps=10)
    got = open_dataset(root).episode(0)
    assert got.length == 1 and got.images[CAM].shape == (1, 64, 64, 3)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    pq.write_table(t.set_column(t.schema.get_field_index("length"), "length", pa.array([-1], pa.int64())), path)
    with pytest.raises(DatasetError, match=r"episode 0: empty episode \(length -1\)"):
        open_dataset(root).episode(0)


def _rewrite_data(root, fn):
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(fn(pq.read_table(path)), path)
    return str(path)


def _set_col(t, name, values):
    return t.set_column(t.schema.get_field_index(name), name, pa.array(values, t.schema.field(name).type))


def test_index_columns_out_of_range_name_file_and_episode(tmp_path, eps):
    root = write_dataset(tmp_path / "ds", eps, fps=10)
    path = _rewrite_data(root, lambda t: _set_col(t, "subtask_index", [0] * 17 + [2]))
    assert open_dataset(root).episode(1, load_images=False).subtasks == ["pick up the red cup"]  # row 8 read back
    with pytest.raises(DatasetError, match=r"subtask_index out of range 0..1") as exc:
        open_dataset(root).episode(2, load_images=False)
    assert exc.value.path == path and exc.value.episode_index == 2
    _rewrite_data(root, lambda t: _set_col(t, "subtask_index", [-1] + [0] * 17))
    with pytest.raises(DatasetError, match=r"subtask_index out of range 0..1"):
        open_dataset(root).episode(0, load_images=False)
    _rewrite_data(root, lambda t: _set_col(t, "task_index", [0] * 8 + [2] + [0] * 9))
    with pytest.raises(DatasetError, match=r"task_index out of range 0..1") as exc:
        open_dataset(root).episode(1, load_images=False)
    assert exc.value.episode_index == 1
    _rewrite_data(root, lambda t: _set_col(t, "task_index", [-1] + [0] * 17))
    with pytest.raises(DatasetError, match=r"task_index out of range 0..1"):
        open_dataset(root).episode(0, load_images=False)
    _rewrite_data(root, lambda t: _set_col(t, "frame_index", [1, 0] + list(range(2, 18))))
    with pytest.raises(DatasetError, match="frame_index is not 0..length-1 in order"):
        open_dataset(root).episode(0, load_images=False)


def test_a_dataset_without_action_reads_t_by_0(tmp_path, eps):
    root = write_dataset(tmp_path / "ds", eps[:1], fps=10)
    _rewrite_data(root, lambda t: t.drop_columns(["action"]))
    info = json.loads((root / "meta/info.json").read_text())
    del info["features"]["action"]
    (root / "meta/info.json").write_text(json.dumps(info))
    got = open_dataset(root).episode(0, load_images=False)
    assert got.action.shape == (8, 0) and got.action.dtype == np.float32
    np.testing.assert_array_equal(got.state, eps[0].state)


def test_fixed_list_columns():
    t = pa.table({"v": pa.array([1.0, 2.5, 3.0], pa.float32()),
                  "l": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                  "ragged": pa.array([[1.0], [2.0, 3.0], [4.0]]),
                  "nan": pa.array([[1.0], [float("nan")], [4.0]])})
    v = _fixed_list_to_numpy(t, "v", "p.parquet", 4)
    assert v.shape == (3, 1) and v.dtype == np.float32 and v[:, 0].tolist() == [1.0, 2.5, 3.0]
    assert _fixed_list_to_numpy(t, "l", "p.parquet", 4).tolist() == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(DatasetError, match="file p.parquet, episode 4: column 'ragged' has rows of different lengths"):
        _fixed_list_to_numpy(t, "ragged", "p.parquet", 4)
    with pytest.raises(DatasetError, match="column 'nan' has non-finite values"):
        _fixed_list_to_numpy(t, "nan", "p.parquet", 4)
    deep = pa.table({"d": pa.array([[[1.0]], [[2.0]]])})
    with pytest.raises(DatasetError, match=r"column 'd' is not a vector per frame \(shape \(2, 1, 1\)\)"):
        _fixed_list_to_numpy(deep, "d", "p.parquet", 0)


def test_indexed_names_tables(tmp_path):
    path = tmp_path / "meta" / "deep" / "tasks.parquet"  # parent folders are created
    write_indexed_names(path, ["b task", "a task"], "task", "task_index")
    assert read_indexed_names(path, "task", "task_index") == ["b task", "a task"]
    # row order does not matter, the index column does
    pq.write_table(pa.table({"task_index": [1, 0], "task": ["second", "first"]}), path)
    assert read_indexed_names(path, "task", "task_index") == ["first", "second"]
    # without the index column the row order is the index (as LeRobot looks names up)
    pq.write_table(pa.table({"__index_level_0__": ["x", "y"]}), path)
    assert read_indexed_names(path, "task", "task_index") == ["x", "y"]
    pq.write_table(pa.table({"task_index": [0, 2], "task": ["a", "b"]}), path)
    with pytest.raises(DatasetError, match=r"task_index values are not 0..1") as exc:
        read_indexed_names(path, "task", "task_index")
    assert exc.value.path == str(path)
    pq.write_table(pa.table({"task_index": [0, 1], "task": ["a", ""]}), path)
    with pytest.raises(DatasetError, match=r"task texts must be non-empty strings \(column 'task'\)"):
        read_indexed_names(path, "task", "task_index")
    pq.write_table(pa.table({"task_index": [0], "name": ["a"]}), path)
    with pytest.raises(DatasetError, match=r"no task text: expected a 'task' column"):
        read_indexed_names(path, "task", "task_index")
    path.write_bytes(b"junk")
    with pytest.raises(DatasetError, match="cannot read parquet"):
        read_indexed_names(path, "task", "task_index")


def test_metadata_errors_name_the_file(tmp_path, eps):
    root = write_dataset(tmp_path / "ds", eps[:1], fps=10)
    (root / "meta/subtasks.parquet").unlink()
    with pytest.raises(DatasetError, match="frames carry subtask_index but meta/subtasks.parquet") as exc:
        LeRobotV3Reader(root)
    assert exc.value.path == str(root / "meta/subtasks.parquet")
    root = write_dataset(tmp_path / "ds2", eps[:1], fps=10)
    ep_file = root / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(ep_file)
    pq.write_table(t.drop_columns(["dataset_to_index", f"videos/{CAM}/to_timestamp"]), ep_file)
    with pytest.raises(DatasetError, match=rf"episode metadata lacks columns \['dataset_to_index', 'videos/{CAM}/to_timestamp'\]") as exc:
        LeRobotV3Reader(root)
    assert exc.value.path == str(ep_file)
    ep_file.write_bytes(b"junk")
    with pytest.raises(DatasetError, match="cannot read parquet"):
        LeRobotV3Reader(root)
    ep_file.unlink()
    with pytest.raises(DatasetError, match="no episode metadata files"):
        LeRobotV3Reader(root)
    info = root / "meta/info.json"
    info.write_text("{bad")
    with pytest.raises(DatasetError, match="invalid JSON") as exc:
        LeRobotV3Reader(root)
    assert exc.value.path == str(info)
    info.write_text(json.dumps({"codebase_version": "v3.0", "features": {}}))
    with pytest.raises(DatasetError, match="info.json has no 'fps'"):
        LeRobotV3Reader(root)
    info.write_text(json.dumps({"codebase_version": "v2.1", "fps": 10, "features": {}}))
    with pytest.raises(DatasetError, match="codebase_version 'v2.1' is not v3.x"):
        LeRobotV3Reader(root)
