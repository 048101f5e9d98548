"""The v2.1 reader, against a small v2.1 dataset this test writes in the legacy layout."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ds_helpers import CAM

from finetune_embodied.datasets import DatasetError, LeRobotV21Reader, open_dataset
from finetune_embodied.datasets.video import VideoWriter


def write_v21(root, episodes, fps=10, chunks_size=2):
    tasks = {}
    (root / "meta").mkdir(parents=True)
    ep_lines = []
    index = 0
    for i, ep in enumerate(episodes):
        chunk = i // chunks_size
        n = ep.length
        ti = tasks.setdefault(ep.task, len(tasks))
        table = pa.table({
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(ep.state.reshape(-1)), 5),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(ep.action.reshape(-1)), 4),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / fps),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, i, dtype=np.int64)),
            "index": pa.array(np.arange(index, index + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, ti, dtype=np.int64)),
        })
        index += n
        path = root / f"data/chunk-{chunk:03d}/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        vw = VideoWriter(root / f"videos/chunk-{chunk:03d}/{CAM}/episode_{i:06d}.mp4", fps, 64, 64)
        vw.write(ep.images[CAM])
        vw.close()
        ep_lines.append({"episode_index": i, "tasks": [ep.task], "length": n})
    (root / "meta/episodes.jsonl").write_text("\n".join(json.dumps(e) for e in ep_lines) + "\n")
    (root / "meta/tasks.jsonl").write_text("\n".join(json.dumps({"task_index": v, "task": k}) for k, v in tasks.items()))
    feats = {
        CAM: {"dtype": "video", "shape": [64, 64, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [5], "names": None},
        "action": {"dtype": "float32", "shape": [4], "names": None},
    }
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
    info = {
        "codebase_version": "v2.1", "robot_type": None, "total_episodes": len(episodes), "fps": fps,
        "chunks_size": chunks_size, "total_chunks": (len(episodes) + chunks_size - 1) // chunks_size,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": feats,
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    return root


def test_reads_v21(tmp_path, episodes):
    root = write_v21(tmp_path / "v21", episodes)
    reader = open_dataset(root)
    assert isinstance(reader, LeRobotV21Reader)
    assert reader.num_episodes == 5 and reader.tasks == ["clear the table", "sort the blocks"]
    for got in reader.iter_episodes():
        want = episodes[got.episode_index]
        assert got.task == want.task and got.subtasks is None
        np.testing.assert_array_equal(got.state, want.state)
        err = np.abs(got.images[CAM].astype(int) - want.images[CAM].astype(int)).mean()
        assert err < 6


def test_v21_bad_data(tmp_path, episodes):
    root = write_v21(tmp_path / "v21", episodes)
    video = root / f"videos/chunk-001/{CAM}/episode_000003.mp4"
    video.unlink()
    reader = open_dataset(root, on_error="skip")
    assert [e.episode_index for e in reader.iter_episodes()] == [0, 1, 2, 4]
    assert reader.report.skipped[0].path == str(video) and reader.report.skipped[0].reason == "video file missing"
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"length": 9', '"length": 12')
    (root / "meta/episodes.jsonl").write_text("\n".join(lines))
    with pytest.raises(DatasetError, match="9 data rows but meta/episodes.jsonl says length 12"):
        open_dataset(root).episode(1)
