"""Reader for LeRobotDataset v2.0/v2.1 folders (one parquet and one mp4 per episode).

Layout (lerobot ``LEGACY_*`` constants)::

    meta/info.json        codebase_version "v2.1", data_path / video_path templates with {episode_chunk}
    meta/episodes.jsonl   {"episode_index", "tasks": [...], "length"} per line
    meta/tasks.jsonl      {"task_index", "task"} per line
    data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
    videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .episode import Episode
from .lerobot_v3 import _action_or_empty, _fixed_list_to_numpy, load_info
from .validation import DatasetError, EpisodeReaderBase, SkipReport, check_on_error
from .video import decode_frames, decode_parquet_images

__all__ = ["LEGACY_DATA_PATH", "LEGACY_VIDEO_PATH", "LeRobotV21Reader"]

LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
LEGACY_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError("missing", path)
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line {lineno}: invalid JSON ({exc})", path) from exc
    return rows


class LeRobotV21Reader(EpisodeReaderBase):
    """Same interface as :class:`LeRobotV3Reader` (``episode``, ``iter_episodes``, ``report``)."""

    def __init__(self, root: str | Path, on_error: str = "raise") -> None:
        self.root = Path(root)
        self.on_error = check_on_error(on_error)
        self.report = SkipReport()
        self.info = load_info(self.root)
        self.version = str(self.info["codebase_version"])
        if not self.version.startswith("v2"):
            raise DatasetError(f"codebase_version {self.version!r} is not v2.x", self.root / "meta/info.json")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") == "image"]  # PNG in the parquet
        self.camera_keys = self.video_keys + self.image_keys
        self.check_required_features(self.root / "meta/info.json")
        self.chunks_size = int(self.info.get("chunks_size", 1000))
        task_rows = _read_jsonl(self.root / LEGACY_TASKS_PATH)
        self.tasks_by_index = {int(r["task_index"]): str(r["task"]) for r in task_rows}
        self.tasks = [self.tasks_by_index[i] for i in sorted(self.tasks_by_index)]
        self._episodes = {}
        for r in _read_jsonl(self.root / LEGACY_EPISODES_PATH):
            if "episode_index" not in r or "length" not in r:
                raise DatasetError(f"episode line lacks episode_index/length: {r}", self.root / LEGACY_EPISODES_PATH)
            self._episodes[int(r["episode_index"])] = r
        self.episode_indices = sorted(self._episodes)
        self.subtasks = None  # v2.1 has no subtask table

    def data_path(self, episode_index: int) -> Path:
        tmpl = self.info.get("data_path", LEGACY_DATA_PATH)
        return self.root / tmpl.format(episode_chunk=episode_index // self.chunks_size, episode_index=episode_index)

    def video_path(self, episode_index: int, key: str) -> Path:
        tmpl = self.info.get("video_path") or LEGACY_VIDEO_PATH
        return self.root / tmpl.format(
            episode_chunk=episode_index // self.chunks_size, video_key=key, episode_index=episode_index
        )

    def episode(self, episode_index: int, load_images: bool = True) -> Episode:
        import pyarrow.parquet as pq

        if episode_index not in self._episodes:
            raise KeyError(f"episode {episode_index} not in {self.root}")
        meta = self._episodes[episode_index]
        length = int(meta["length"])
        path = self.data_path(episode_index)
        if length <= 0:
            raise DatasetError(f"empty episode (length {length})", path, episode_index)
        if not path.is_file():
            raise DatasetError("data file missing", path, episode_index)
        try:
            rows = pq.read_table(path)
        except Exception as exc:
            raise DatasetError(f"cannot read parquet ({exc})", path, episode_index) from exc
        needed = [k for k, f in self.features.items() if f.get("dtype") != "video"]
        missing = [c for c in needed if c not in rows.column_names]
        if missing:
            raise DatasetError(f"missing columns {missing} (declared in meta/info.json features)", path, episode_index)
        if rows.num_rows != length:
            raise DatasetError(f"{rows.num_rows} data rows but meta/episodes.jsonl says length {length}", path, episode_index)
        if not np.array_equal(rows.column("frame_index").to_numpy(), np.arange(length)):
            raise DatasetError("frame_index is not 0..length-1 in order", path, episode_index)
        task_idx = rows.column("task_index").to_numpy()
        bad = sorted(set(task_idx.tolist()) - set(self.tasks_by_index))
        if bad:
            raise DatasetError(f"task_index {bad} not in meta/tasks.jsonl", path, episode_index)
        timestamp = rows.column("timestamp").to_numpy().astype(np.float32)
        images = {}
        if load_images:
            for key in self.image_keys:
                images[key] = decode_parquet_images(rows, key, path, episode_index)
            for key in self.video_keys:
                vpath = self.video_path(episode_index, key)
                # One file per episode: frames from t=0 to length/fps.
                frames = decode_frames(vpath, self.fps, 0.0, length / self.fps, episode_index)
                if len(frames) != length:
                    raise DatasetError(f"video has {len(frames)} frames, data has {length}", vpath, episode_index)
                images[key] = frames
        return Episode(
            task=self.tasks_by_index[int(task_idx[0])],
            images=images,
            state=_fixed_list_to_numpy(rows, "observation.state", path, episode_index),
            action=_action_or_empty(rows, path, episode_index),
            subtasks=None,
            episode_index=episode_index,
            timestamp=timestamp,
        )
