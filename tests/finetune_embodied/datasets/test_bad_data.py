"""Bad data is a DatasetError naming file and episode, or a counted skip; never a silent drop."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from ds_helpers import CAM

from finetune_embodied.datasets import DatasetError, open_dataset, write_dataset


@pytest.fixture
def dataset(tmp_path, episodes):
    # 5 episodes, 2 per file: file-000 = eps 0,1; file-001 = eps 2,3; file-002 = ep 4.
    return write_dataset(tmp_path / "ds", episodes, fps=10, max_episodes_per_file=2)


def _rewrite_data(root, file_index, fn):
    path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
    pq.write_table(fn(pq.read_table(path)), path)
    return path


def test_corrupt_video_raises_naming_file_and_episode(dataset):
    video = dataset / f"videos/{CAM}/chunk-000/file-001.mp4"
    video.write_bytes(b"\x00not an mp4 at all" * 50)
    reader = open_dataset(dataset)
    assert reader.episode(1).length == 9  # other files still fine
    with pytest.raises(DatasetError) as exc:
        reader.episode(2)
    assert str(video) in str(exc.value) and "episode 2" in str(exc.value)


def test_corrupt_video_skip_is_counted(dataset):
    (dataset / f"videos/{CAM}/chunk-000/file-001.mp4").write_bytes(b"garbage")
    reader = open_dataset(dataset, on_error="skip")
    got = [e.episode_index for e in reader.iter_episodes()]
    assert got == [0, 1, 4]
    assert reader.report.count == 2
    assert [s.episode_index for s in reader.report.skipped] == [2, 3]
    assert "file-001.mp4" in reader.report.summary()


def test_missing_column(dataset):
    path = _rewrite_data(dataset, 0, lambda t: t.drop_columns(["action"]))
    with pytest.raises(DatasetError, match="missing columns \\['action'\\]") as exc:
        list(open_dataset(dataset).iter_episodes())
    assert str(path) in str(exc.value) and "episode 0" in str(exc.value)


def test_mismatched_lengths(dataset):
    # Drop the last row of episode 3: data has 10 rows but the metadata says 11.
    def drop_last(t):
        keep = pc.invert(pc.equal(t.column("index"), pa.scalar(8 + 9 + 10 + 10, pa.int64())))
        return t.filter(keep)

    path = _rewrite_data(dataset, 1, drop_last)
    reader = open_dataset(dataset, on_error="skip")
    assert [e.episode_index for e in reader.iter_episodes()] == [0, 1, 2, 4]
    assert reader.report.skipped[0].path == str(path)
    assert "10 data rows but episode metadata says length 11" in reader.report.skipped[0].reason


def test_video_shorter_than_data(tmp_path, episodes):
    from finetune_embodied.datasets.video import VideoWriter

    root = write_dataset(tmp_path / "ds", episodes[:1], fps=10)
    video = root / f"videos/{CAM}/chunk-000/file-000.mp4"
    vw = VideoWriter(video, 10, 64, 64)
    vw.write(episodes[0].images[CAM][:5])
    vw.close()
    with pytest.raises(DatasetError, match="video has 5 frames for this episode, data has 8"):
        open_dataset(root).episode(0)


def test_empty_episode(dataset):
    path = dataset / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    lengths = t.column("length").to_pylist()
    lengths[4] = 0
    pq.write_table(t.set_column(t.schema.get_field_index("length"), "length", pa.array(lengths, pa.int64())), path)
    with pytest.raises(DatasetError, match="empty episode") as exc:
        open_dataset(dataset).episode(4)
    assert "episode 4" in str(exc.value)


def test_unknown_version_and_bad_policy(dataset):
    info_path = dataset / "meta/info.json"
    info = json.loads(info_path.read_text())
    with pytest.raises(ValueError, match="on_error"):
        open_dataset(dataset, on_error="ignore")
    info["codebase_version"] = "v1.6"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="unsupported codebase_version 'v1.6'"):
        open_dataset(dataset)
