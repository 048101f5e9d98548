"""The v2.1 reader, value by value: path templates (and LeRobot's defaults when info.json has
none), exact values read back, boundaries, and errors that name the bad file, line or episode."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import CAM, make_episode
from test_lerobot_v21 import write_v21

from finetune_embodied.datasets import DatasetError, LeRobotV21Reader, open_dataset


@pytest.fixture
def v21(tmp_path):
    # 3 episodes (8, 1 and 9 frames), 2 per chunk: episodes 0, 1 in chunk-000, episode 2 in chunk-001.
    eps = [make_episode(8, seed=0), make_episode(1, seed=1, task="sort the blocks"), make_episode(9, seed=2)]
    return write_v21(tmp_path / "v21", eps), eps


def _info(root) -> dict:
    return json.loads((root / "meta/info.json").read_text())


def _set_info(root, **kw) -> None:
    info = _info(root)
    for k, v in kw.items():
        if v is ...:
            info.pop(k)
        else:
            info[k] = v
    (root / "meta/info.json").write_text(json.dumps(info))


def _rewrite(root, ep: int, chunk: int, fn) -> str:
    path = root / f"data/chunk-{chunk:03d}/episode_{ep:06d}.parquet"
    pq.write_table(fn(pq.read_table(path)), path)
    return str(path)


def _set_col(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, pa.array(values, t.schema.field(name).type))


def test_values_read_back_exactly(v21):
    root, eps = v21
    reader = LeRobotV21Reader(root)
    assert reader.version == "v2.1" and reader.fps == 10.0 and reader.chunks_size == 2
    assert reader.camera_keys == [CAM] and reader.video_keys == [CAM] and reader.image_keys == []
    assert reader.episode_indices == [0, 1, 2] and reader.num_frames == 18 and reader.subtasks is None
    assert reader.tasks_by_index == {0: "clear the table", 1: "sort the blocks"}
    for i, want in enumerate(eps):
        got = reader.episode(i)
        assert got.episode_index == i and got.length == want.length and got.task == want.task
        np.testing.assert_array_equal(got.state, want.state)
        np.testing.assert_array_equal(got.action, want.action)
        np.testing.assert_array_equal(got.timestamp, np.arange(want.length, dtype=np.float32) / 10)
        assert got.images[CAM].shape == want.images[CAM].shape
    assert reader.episode(2, load_images=False).images == {}


def test_video_frames_are_the_episode_own_frames_from_t0(v21):
    root, eps = v21
    frames = LeRobotV21Reader(root).episode(2).images[CAM]
    src = eps[2].images[CAM].astype(int)
    nearest = [int(np.argmin(np.abs(src - f.astype(int)).mean(axis=(1, 2, 3)))) for f in frames]
    assert nearest == list(range(9))  # frame k is source frame k: no shift, none missing at either end
    # a one-frame episode: the video's only frame
    one = LeRobotV21Reader(root).episode(1)
    assert one.length == 1 and np.abs(one.images[CAM].astype(int) - eps[1].images[CAM].astype(int)).mean() < 6


def test_v21_path_templates_and_chunk_arithmetic(v21):
    root, _ = v21
    reader = LeRobotV21Reader(root)
    assert reader.data_path(1) == root / "data/chunk-000/episode_000001.parquet"
    assert reader.data_path(2) == root / "data/chunk-001/episode_000002.parquet"
    assert reader.data_path(5) == root / "data/chunk-002/episode_000005.parquet"
    assert reader.video_path(3, CAM) == root / f"videos/chunk-001/{CAM}/episode_000003.mp4"
    assert reader.video_path(4, "observation.images.wrist") == root / "videos/chunk-002/observation.images.wrist/episode_000004.mp4"


def test_v21_default_templates_when_info_json_has_none(v21):
    # No data_path / chunks_size and a null video_path: LeRobot's legacy templates and 1000 per chunk.
    root, _ = v21
    _set_info(root, data_path=..., chunks_size=..., video_path=None)
    reader = LeRobotV21Reader(root)
    assert reader.chunks_size == 1000
    assert reader.data_path(999) == root / "data/chunk-000/episode_000999.parquet"
    assert reader.data_path(1000) == root / "data/chunk-001/episode_001000.parquet"
    assert reader.video_path(2001, CAM) == root / f"videos/chunk-002/{CAM}/episode_002001.mp4"


def test_a_custom_template_from_info_json_is_used(v21):
    root, _ = v21
    _set_info(root, data_path="d/{episode_chunk}/{episode_index}.parquet", video_path="v/{video_key}/{episode_index}.mp4")
    reader = LeRobotV21Reader(root)
    assert reader.data_path(3) == root / "d/1/3.parquet"
    assert reader.video_path(3, CAM) == root / f"v/{CAM}/3.mp4"


def test_jsonl_blank_lines_are_skipped_and_bad_lines_named(v21):
    root, _ = v21
    path = root / "meta/episodes.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n" + lines[0] + "\n   \n" + "\n".join(lines[1:]) + "\n\n")
    assert LeRobotV21Reader(root).episode_indices == [0, 1, 2]
    path.write_text(lines[0] + "\n{not json\n" + lines[2])
    with pytest.raises(DatasetError, match="line 2: invalid JSON") as exc:
        LeRobotV21Reader(root)
    assert str(path) in str(exc.value)
    path.write_text(lines[0] + "\n" + json.dumps({"episode_index": 1, "tasks": []}) + "\n")
    with pytest.raises(DatasetError, match="episode line lacks episode_index/length") as exc:
        LeRobotV21Reader(root)
    assert str(path) in str(exc.value)
    path.write_text(json.dumps({"length": 3}) + "\n")
    with pytest.raises(DatasetError, match="episode line lacks episode_index/length"):
        LeRobotV21Reader(root)


@pytest.mark.parametrize("name", ["tasks.jsonl", "episodes.jsonl"])
def test_a_missing_jsonl_file_is_named(v21, name):
    root, _ = v21
    (root / "meta" / name).unlink()
    with pytest.raises(DatasetError, match="missing") as exc:
        LeRobotV21Reader(root)
    assert exc.value.path == str(root / "meta" / name)


def test_version_must_be_v2(v21):
    root, _ = v21
    _set_info(root, codebase_version="v3.0")
    with pytest.raises(DatasetError, match="codebase_version 'v3.0' is not v2.x") as exc:
        LeRobotV21Reader(root)
    assert exc.value.path == str(root / "meta/info.json")
    _set_info(root, codebase_version="v2.0")
    assert LeRobotV21Reader(root).version == "v2.0"


def test_no_state_feature_is_refused(v21):
    root, _ = v21
    info = _info(root)
    del info["features"]["observation.state"]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="no 'observation.state' feature"):
        LeRobotV21Reader(root)


def test_unknown_episode_is_a_key_error(v21):
    root, _ = v21
    with pytest.raises(KeyError, match="episode 7 not in"):
        LeRobotV21Reader(root).episode(7)


@pytest.mark.parametrize("length", [0, -1])
def test_empty_episode_names_the_episode(v21, length):
    root, _ = v21
    path = root / "meta/episodes.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"episode_index": 1, "tasks": ["sort the blocks"], "length": length})
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=rf"episode 1: empty episode \(length {length}\)") as exc:
        LeRobotV21Reader(root).episode(1)
    assert exc.value.path == str(root / "data/chunk-000/episode_000001.parquet")


def test_missing_and_corrupt_data_files_are_named(v21):
    root, _ = v21
    path = root / "data/chunk-001/episode_000002.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="cannot read parquet") as exc:
        LeRobotV21Reader(root).episode(2)
    assert exc.value.path == str(path) and exc.value.episode_index == 2
    path.unlink()
    with pytest.raises(DatasetError, match="data file missing") as exc:
        LeRobotV21Reader(root).episode(2)
    assert exc.value.path == str(path) and exc.value.episode_index == 2


def test_missing_columns_are_named(v21):
    root, _ = v21
    path = _rewrite(root, 0, 0, lambda t: t.drop_columns(["timestamp"]))
    with pytest.raises(DatasetError, match=r"missing columns \['timestamp'\]") as exc:
        LeRobotV21Reader(root).episode(0, load_images=False)
    assert exc.value.path == path and exc.value.episode_index == 0


def test_frame_index_out_of_order(v21):
    root, _ = v21
    path = _rewrite(root, 2, 1, lambda t: _set_col(t, "frame_index", [0, 1, 2, 3, 5, 4, 6, 7, 8]))
    with pytest.raises(DatasetError, match=r"frame_index is not 0..length-1 in order") as exc:
        LeRobotV21Reader(root).episode(2, load_images=False)
    assert exc.value.path == path


def test_task_index_must_be_in_tasks_jsonl_and_the_first_frame_names_the_task(v21):
    root, _ = v21
    path = _rewrite(root, 0, 0, lambda t: _set_col(t, "task_index", [1] + [0] * 7))
    assert LeRobotV21Reader(root).episode(0, load_images=False).task == "sort the blocks"
    _rewrite(root, 0, 0, lambda t: _set_col(t, "task_index", [0] * 7 + [5]))
    with pytest.raises(DatasetError, match=r"task_index \[5\] not in meta/tasks.jsonl") as exc:
        LeRobotV21Reader(root).episode(0, load_images=False)
    assert exc.value.path == path and exc.value.episode_index == 0


def test_video_frame_count_must_match_the_data(v21):
    root, eps = v21
    from finetune_embodied.datasets.video import VideoWriter

    video = root / f"videos/chunk-000/{CAM}/episode_000000.mp4"
    vw = VideoWriter(video, 10, 64, 64)
    vw.write(eps[0].images[CAM][:5])  # 5 frames for 8 rows
    vw.close()
    reader = open_dataset(root)
    with pytest.raises(DatasetError, match="video has 5 frames, data has 8") as exc:
        reader.episode(0)
    assert exc.value.path == str(video)


def test_png_frames_in_the_parquet_read_back_exactly(v21):
    # A v2.1 "image" feature (use_videos=False): PNG bytes per frame in the data parquet, lossless.
    import cv2

    root, eps = v21
    src = eps[0].images[CAM][:, ::2, ::2].copy()  # 32x32, different from the video's frames
    cells = [{"bytes": cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes(), "path": f"f{k}.png"}
             for k, f in enumerate(src)]
    col = pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    _rewrite(root, 0, 0, lambda t: t.append_column("observation.image", col))
    info = _info(root)
    info["features"]["observation.image"] = {"dtype": "image", "shape": [32, 32, 3], "names": None}
    (root / "meta/info.json").write_text(json.dumps(info))
    reader = LeRobotV21Reader(root)
    assert reader.camera_keys == [CAM, "observation.image"] and reader.image_keys == ["observation.image"]
    got = reader.episode(0)
    np.testing.assert_array_equal(got.images["observation.image"], src)
    assert got.images[CAM].shape == (8, 64, 64, 3)
    assert reader.episode(0, load_images=False).images == {}
