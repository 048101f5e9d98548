"""LeRobotDataset v3.0 on disk, written and read with pyarrow + PyAV (not the ``lerobot`` package).

Layout (matches huggingface/lerobot ``src/lerobot/datasets/utils.py``, see docs/datasets.md)::

    meta/info.json                                   codebase_version "v3.0", features, fps, path templates
    meta/stats.json                                  per-feature min/max/mean/std/count
    meta/tasks.parquet                               task (pandas index) -> task_index
    meta/subtasks.parquet                            subtask (pandas index) -> subtask_index  (our step text)
    meta/episodes/chunk-000/file-000.parquet         one row per episode: row range, data/video file, video times
    data/chunk-{c:03d}/file-{f:03d}.parquet          many episodes per file
    videos/{video_key}/chunk-{c:03d}/file-{f:03d}.mp4   episodes concatenated, frame k at t = k / fps

Frame columns: observation.images.<cam> (video, not in parquet), observation.state, action, timestamp,
frame_index, episode_index, index, task_index, subtask_index.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .episode import IMAGE_KEY_PREFIX, Episode
from .validation import DatasetError, EpisodeReaderBase, SkipReport, check_on_error
from .video import (
    DEFAULT_CODEC,
    DEFAULT_CRF,
    DEFAULT_PIX_FMT,
    VideoWriter,
    check_video_settings,
    decode_frames,
    decode_parquet_images,
)

__all__ = [
    "CODEBASE_VERSION",
    "DEFAULT_DATA_PATH",
    "DEFAULT_EPISODES_PATH",
    "DEFAULT_VIDEO_PATH",
    "LeRobotV3Reader",
    "LeRobotV3Writer",
]

# Constants as in lerobot/datasets/utils.py (v3.0).
CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000  # max files per chunk folder
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
SUBTASKS_PATH = "meta/subtasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"

# Per-frame columns every LeRobot dataset has (DEFAULT_FEATURES upstream), plus our subtask label.
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
SUBTASK_FEATURE = {"subtask_index": {"dtype": "int64", "shape": [1], "names": None}}
STAT_NAMES = ("min", "max", "mean", "std", "count")


def _pa():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _chunk_file(n: int, chunks_size: int) -> tuple[int, int]:
    """The n-th file overall -> (chunk_index, file_index), as update_chunk_file_indices walks them."""
    return n // chunks_size, n % chunks_size


def write_indexed_names(path: Path, names: list[str], index_name: str, column: str) -> None:
    """tasks.parquet / subtasks.parquet: what ``pandas.DataFrame({column: range(n)}, index=Index(names,
    name=index_name)).to_parquet(path)`` writes, without needing pandas: the index is stored as a
    column plus the ``pandas`` schema metadata that makes ``pd.read_parquet`` restore it as the index."""
    pa, pq = _pa()
    table = pa.table({column: pa.array(range(len(names)), pa.int64()), index_name: pa.array(names, pa.string())})
    pandas_meta = {
        "index_columns": [index_name],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": {"encoding": "UTF-8"}}
        ],
        "columns": [
            {"name": column, "field_name": column, "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": index_name, "field_name": index_name, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _pandas_index_columns(table) -> list[str]:
    """The columns the ``pandas`` schema metadata names as the frame's index (a RangeIndex is stored
    as a description, not a column, and is left out)."""
    meta = (table.schema.metadata or {}).get(b"pandas")
    if not meta:
        return []
    try:
        cols = json.loads(meta).get("index_columns", [])
    except (ValueError, AttributeError):
        return []
    return [c for c in cols if isinstance(c, str) and c in table.column_names]


def read_indexed_names(path: Path, index_name: str, column: str) -> list[str]:
    """The names of tasks.parquet / subtasks.parquet in index order, as LeRobot reads them.

    LeRobot writes these files with pandas: the text is the frame's index, stored as a column named
    ``index_name`` when the index has that name (our writer) or ``__index_level_0__`` when it has
    none (LeRobot's writer, its v2.1->v3.0 converter and its aggregate tool); the ``pandas`` schema
    metadata says which. A plain ``index_name`` column (after ``reset_index``) is read too. Row ``i``
    of the file is name ``column == i``; without a ``column`` (LeRobot itself looks names up by row
    position) the row order is the index.
    """
    _, pq = _pa()
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DatasetError(f"cannot read parquet ({exc})", path) from exc
    candidates = [index_name, *_pandas_index_columns(table), "__index_level_0__"]
    text_col = next((c for c in candidates if c in table.column_names and c != column), None)
    if text_col is None:
        raise DatasetError(
            f"no {index_name} text: expected a {index_name!r} column or a pandas index column "
            f"(has {table.column_names})", path)
    names = table.column(text_col).to_pylist()
    if any(not isinstance(n, str) or not n for n in names):
        raise DatasetError(f"{index_name} texts must be non-empty strings (column {text_col!r})", path)
    if column not in table.column_names:
        return names
    idx = table.column(column).to_pylist()
    if sorted(idx) != list(range(len(idx))):
        raise DatasetError(f"{column} values are not 0..{len(idx) - 1}", path)
    out = [""] * len(idx)
    for name, i in zip(names, idx):
        out[i] = name
    return out


class _RunningStats:
    """min/max/mean/std/count over rows (numeric features) or pixels per channel (images, in [0, 1])."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = self.sumsq = self.min = self.max = None

    def update(self, x: np.ndarray) -> None:  # x: (N, D) float64
        if len(x) == 0:
            return
        s, sq, mn, mx = x.sum(0), (x * x).sum(0), x.min(0), x.max(0)
        if self.sum is None:
            self.sum, self.sumsq, self.min, self.max = s, sq, mn, mx
        else:
            self.sum, self.sumsq = self.sum + s, self.sumsq + sq
            self.min, self.max = np.minimum(self.min, mn), np.maximum(self.max, mx)
        self.n += len(x)

    def result(self, image: bool = False) -> dict[str, list]:
        mean = self.sum / self.n
        std = np.sqrt(np.maximum(self.sumsq / self.n - mean * mean, 0.0))
        out = {"min": self.min, "max": self.max, "mean": mean, "std": std}
        if image:  # LeRobot keeps image stats as (C, 1, 1)
            out = {k: v.reshape(-1, 1, 1) for k, v in out.items()}
        res = {k: v.tolist() for k, v in out.items()}
        res["count"] = [int(self.n)]
        return res

    def merge(self, other: _RunningStats) -> None:
        if other.sum is None:
            return
        if self.sum is None:
            self.n, self.sum, self.sumsq, self.min, self.max = other.n, other.sum, other.sumsq, other.min, other.max
            return
        self.n += other.n
        self.sum, self.sumsq = self.sum + other.sum, self.sumsq + other.sumsq
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)


def _image_rows(frames: np.ndarray, max_frames: int = 16) -> np.ndarray:
    """Pixels of a few evenly spaced frames as (N, 3) in [0, 1] (stats need not see every pixel)."""
    pick = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    return frames[pick].reshape(-1, 3).astype(np.float64) / 255.0


class LeRobotV3Writer:
    """Streams episodes into a new LeRobot v3.0 dataset folder; ``close()`` writes the metadata.

    Many episodes share one data parquet and one mp4 per camera; a new file starts when the current
    data file passes ``data_files_size_in_mb`` / the video passes ``video_files_size_in_mb`` or, for
    tests, ``max_episodes_per_file``. Use as a context manager; an exception leaves no metadata, so
    a half-written folder is never mistaken for a dataset.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        camera_shapes: dict[str, tuple[int, int]],
        state_names: list[str],
        action_names: list[str],
        robot_type: str | None = None,
        with_subtasks: bool = True,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
        data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        max_episodes_per_file: int | None = None,
        codec: str = DEFAULT_CODEC,
        pix_fmt: str = DEFAULT_PIX_FMT,
        crf: int = DEFAULT_CRF,
        overwrite: bool = False,
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{self.root} exists and is not empty (pass overwrite=True to replace it)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = int(fps)
        self.camera_keys = [IMAGE_KEY_PREFIX + c if not c.startswith(IMAGE_KEY_PREFIX) else c for c in camera_shapes]
        self.camera_shapes = dict(zip(self.camera_keys, camera_shapes.values()))
        self.state_names = list(state_names)
        self.action_names = list(action_names)
        self.robot_type = robot_type
        self.with_subtasks = with_subtasks
        self.chunks_size = chunks_size
        self.data_files_size_in_mb = data_files_size_in_mb
        self.video_files_size_in_mb = video_files_size_in_mb
        self.max_episodes_per_file = max_episodes_per_file
        check_video_settings(pix_fmt, crf)
        self.codec = codec
        self.pix_fmt = pix_fmt
        self.crf = int(crf)
        self.tasks: dict[str, int] = {}
        self.subtasks: dict[str, int] = {}
        self.episode_rows: list[dict] = []
        self.total_frames = 0
        self._file_n = 0  # running file number (data and videos roll together)
        self._data_writer = None
        self._data_bytes = 0
        self._episodes_in_file = 0
        self._videos: dict[str, VideoWriter] = {}
        self._stats = {k: _RunningStats() for k in ["observation.state", "action", *self.camera_keys]}
        self._closed = False

    # ---- features -----------------------------------------------------------------------------
    def features(self) -> dict[str, dict]:
        feats: dict[str, dict] = {}
        for key in self.camera_keys:
            h, w = self.camera_shapes[key]
            feats[key] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264" if self.codec == "libx264" else self.codec,
                    "video.pix_fmt": self.pix_fmt,
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        feats["observation.state"] = {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names}
        feats["action"] = {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names}
        feats.update(json.loads(json.dumps(DEFAULT_FEATURES)))
        if self.with_subtasks:
            feats.update(json.loads(json.dumps(SUBTASK_FEATURE)))
        return feats

    def _schema(self):
        pa, _ = _pa()
        fields = [
            ("observation.state", pa.list_(pa.float32(), len(self.state_names))),
            ("action", pa.list_(pa.float32(), len(self.action_names))),
            ("timestamp", pa.float32()),
            ("frame_index", pa.int64()),
            ("episode_index", pa.int64()),
            ("index", pa.int64()),
            ("task_index", pa.int64()),
        ]
        if self.with_subtasks:
            fields.append(("subtask_index", pa.int64()))
        return pa.schema(fields)

    # ---- writing ------------------------------------------------------------------------------
    def _open_files(self) -> None:
        _, pq = _pa()
        chunk, file = _chunk_file(self._file_n, self.chunks_size)
        path = self.root / DEFAULT_DATA_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._data_writer = pq.ParquetWriter(str(path), self._schema())
        self._data_bytes = 0
        self._episodes_in_file = 0
        for key in self.camera_keys:
            h, w = self.camera_shapes[key]
            vpath = self.root / DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            self._videos[key] = VideoWriter(vpath, self.fps, w, h, codec=self.codec, crf=self.crf, pix_fmt=self.pix_fmt)

    def _close_files(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for vw in self._videos.values():
            vw.close()
        self._videos = {}
        self._file_n += 1

    def _file_full(self) -> bool:
        if self.max_episodes_per_file is not None and self._episodes_in_file >= self.max_episodes_per_file:
            return True
        if self._data_bytes / 2**20 >= self.data_files_size_in_mb:
            return True
        return any(v.path.exists() and v.path.stat().st_size / 2**20 >= self.video_files_size_in_mb for v in self._videos.values())

    def add_episode(self, ep: Episode) -> int:
        """Append one episode; returns its episode_index."""
        pa, _ = _pa()
        if self._closed:
            raise RuntimeError("writer is closed")
        if sorted(ep.images) != sorted(self.camera_keys):
            raise ValueError(f"episode cameras {sorted(ep.images)} != dataset cameras {sorted(self.camera_keys)}")
        for key in self.camera_keys:
            if ep.images[key].shape[1:3] != tuple(self.camera_shapes[key]):
                raise ValueError(f"{key}: frames are {ep.images[key].shape[1:3]}, dataset is {self.camera_shapes[key]}")
        if ep.state.shape[1] != len(self.state_names) or ep.action.shape[1] != len(self.action_names):
            raise ValueError(
                f"state/action dims {ep.state.shape[1]}/{ep.action.shape[1]} != "
                f"{len(self.state_names)}/{len(self.action_names)}"
            )
        if self.with_subtasks and ep.subtasks is None:
            raise ValueError("this dataset has subtask labels: Episode.subtasks must be set")
        if self._data_writer is not None and self._file_full():
            self._close_files()
        if self._data_writer is None:
            self._open_files()

        ep_index = len(self.episode_rows)
        n = ep.length
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))
        frame_index = np.arange(n, dtype=np.int64)
        cols = {
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(ep.state.reshape(-1)), len(self.state_names)),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(ep.action.reshape(-1)), len(self.action_names)),
            # Timestamps are always k / fps: video frames are addressed by exactly these times.
            "timestamp": pa.array((frame_index / self.fps).astype(np.float32)),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.full(n, ep_index, dtype=np.int64)),
            "index": pa.array(np.arange(self.total_frames, self.total_frames + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
        }
        if self.with_subtasks:
            cols["subtask_index"] = pa.array([self.subtasks.setdefault(s, len(self.subtasks)) for s in ep.subtasks], pa.int64())
        table = pa.Table.from_pydict(cols, schema=self._schema())
        self._data_writer.write_table(table)
        self._data_bytes += table.nbytes

        chunk, file = _chunk_file(self._file_n, self.chunks_size)
        row: dict = {
            "episode_index": ep_index,
            "tasks": [ep.task],
            "length": n,
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": self.total_frames,
            "dataset_to_index": self.total_frames + n,
        }
        for key in self.camera_keys:
            vw = self._videos[key]
            start = vw.num_frames
            vw.write(ep.images[key])
            row[f"videos/{key}/chunk_index"] = chunk
            row[f"videos/{key}/file_index"] = file
            row[f"videos/{key}/from_timestamp"] = start / self.fps
            row[f"videos/{key}/to_timestamp"] = (start + n) / self.fps
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        # Per-episode stats columns "stats/<feature>/<stat>", as LeRobot writes them.
        ep_stats = {}
        for key, values in (("observation.state", ep.state), ("action", ep.action)):
            s = _RunningStats()
            s.update(values.astype(np.float64))
            ep_stats[key] = (s, False)
        for key in self.camera_keys:
            s = _RunningStats()
            s.update(_image_rows(ep.images[key]))
            ep_stats[key] = (s, True)
        for key, (s, is_img) in ep_stats.items():
            for stat, value in s.result(image=is_img).items():
                row[f"stats/{key}/{stat}"] = value
            self._stats[key].merge(s)
        self.episode_rows.append(row)
        self.total_frames += n
        self._episodes_in_file += 1
        return ep_index

    def close(self) -> Path:
        """Finish the files and write meta/ (info, stats, tasks, subtasks, episodes). Returns the root."""
        pa, pq = _pa()
        if self._closed:
            return self.root
        if not self.episode_rows:
            raise ValueError(f"{self.root}: no episodes were added; refusing to write an empty dataset")
        self._close_files()
        self._closed = True
        meta = self.root / "meta"
        write_indexed_names(self.root / TASKS_PATH, list(self.tasks), "task", "task_index")
        if self.with_subtasks:
            write_indexed_names(self.root / SUBTASKS_PATH, list(self.subtasks), "subtask", "subtask_index")
        ep_path = self.root / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), ep_path)
        stats = {}
        for key, s in self._stats.items():
            stats[key] = s.result(image=key in self.camera_keys)
        (meta / "stats.json").write_text(json.dumps(stats, indent=4))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episode_rows),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": self.video_files_size_in_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episode_rows)}"},
            "data_path": DEFAULT_DATA_PATH,
            "video_path": DEFAULT_VIDEO_PATH if self.camera_keys else None,
            "features": self.features(),
        }
        # info.json last: its presence marks a complete dataset.
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        return self.root

    def abort(self) -> None:
        """Close open files without writing metadata (the folder is not a valid dataset)."""
        if self._data_writer is not None or self._videos:
            self._close_files()
        self._closed = True

    def __enter__(self) -> LeRobotV3Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_dataset(root: str | Path, episodes: list[Episode], fps: int, **kwargs) -> Path:
    """Write ``episodes`` as a new v3.0 dataset; names of state/action dims default to s0.., a0..."""
    if not episodes:
        raise ValueError("write_dataset: no episodes")
    first = episodes[0]
    kwargs.setdefault("state_names", [f"s{i}" for i in range(first.state.shape[1])])
    kwargs.setdefault("action_names", [f"a{i}" for i in range(first.action.shape[1])])
    kwargs.setdefault("with_subtasks", first.subtasks is not None)
    cams = {k: tuple(v.shape[1:3]) for k, v in first.images.items()}
    with LeRobotV3Writer(root, fps, cams, **kwargs) as w:
        for ep in episodes:
            w.add_episode(ep)
    return Path(root)


# ---- reading ------------------------------------------------------------------------------------
REQUIRED_EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index",
                            "dataset_from_index", "dataset_to_index")


def load_info(root: Path) -> dict:
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError("not a LeRobot dataset: meta/info.json missing", path)
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"invalid JSON ({exc})", path) from exc
    for key in ("codebase_version", "fps", "features"):
        if key not in info:
            raise DatasetError(f"info.json has no {key!r}", path)
    return info


class LeRobotV3Reader(EpisodeReaderBase):
    """Reads a v3.0 dataset folder. ``episode(i)`` returns an :class:`Episode` with decoded frames.

    ``on_error="raise"`` (default) raises :class:`DatasetError` naming the file and episode for bad
    data; ``"skip"`` leaves bad episodes out of ``iter_episodes()`` and counts them in ``self.report``.
    """

    version = CODEBASE_VERSION

    def __init__(self, root: str | Path, on_error: str = "raise") -> None:
        pa, pq = _pa()
        self.root = Path(root)
        self.on_error = check_on_error(on_error)
        self.report = SkipReport()
        self.info = load_info(self.root)
        if not str(self.info["codebase_version"]).startswith("v3"):
            raise DatasetError(f"codebase_version {self.info['codebase_version']!r} is not v3.x", self.root / INFO_PATH)
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") == "image"]  # PNG in the parquet
        self.camera_keys = self.video_keys + self.image_keys
        self.check_required_features(self.root / INFO_PATH)
        self.tasks = read_indexed_names(self.root / TASKS_PATH, "task", "task_index")
        sub_path = self.root / SUBTASKS_PATH
        self.subtasks = read_indexed_names(sub_path, "subtask", "subtask_index") if sub_path.is_file() else None
        if self.subtasks is None and "subtask_index" in self.features:
            raise DatasetError("frames carry subtask_index but meta/subtasks.parquet (the step texts) is missing",
                               sub_path)
        ep_files = sorted((self.root / EPISODES_DIR).glob("*/*.parquet"))
        if not ep_files:
            raise DatasetError("no episode metadata files", self.root / EPISODES_DIR)
        rows: list[dict] = []
        for path in ep_files:
            try:
                table = pq.read_table(path)
            except Exception as exc:
                raise DatasetError(f"cannot read parquet ({exc})", path) from exc
            missing = [c for c in REQUIRED_EPISODE_COLUMNS if c not in table.column_names]
            missing += [f"videos/{k}/{p}" for k in self.video_keys for p in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
                        if f"videos/{k}/{p}" not in table.column_names]
            if missing:
                raise DatasetError(f"episode metadata lacks columns {missing}", path)
            keep = [c for c in table.column_names if not c.startswith("stats/")]
            rows += table.select(keep).to_pylist()
        self._episodes = {int(r["episode_index"]): r for r in rows}
        self.episode_indices = sorted(self._episodes)
        self._data_cache: dict[Path, object] = {}

    # ---- metadata -----------------------------------------------------------------------------
    def episode_meta(self, episode_index: int) -> dict:
        if episode_index not in self._episodes:
            raise KeyError(f"episode {episode_index} not in {self.root} (has {self.num_episodes} episodes)")
        return self._episodes[episode_index]

    def data_path(self, episode_index: int) -> Path:
        r = self.episode_meta(episode_index)
        tmpl = self.info.get("data_path", DEFAULT_DATA_PATH)
        return self.root / tmpl.format(chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]))

    def video_path(self, episode_index: int, key: str) -> Path:
        r = self.episode_meta(episode_index)
        tmpl = self.info.get("video_path") or DEFAULT_VIDEO_PATH
        return self.root / tmpl.format(
            video_key=key, chunk_index=int(r[f"videos/{key}/chunk_index"]), file_index=int(r[f"videos/{key}/file_index"])
        )

    # ---- data ---------------------------------------------------------------------------------
    def _data_table(self, path: Path, episode_index: int):
        _, pq = _pa()
        if path not in self._data_cache:
            if not path.is_file():
                raise DatasetError("data file missing", path, episode_index)
            try:
                self._data_cache[path] = pq.read_table(path)
            except Exception as exc:
                raise DatasetError(f"cannot read parquet ({exc})", path, episode_index) from exc
        return self._data_cache[path]

    def _required_columns(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") != "video"]

    def _load_episode(self, episode_index: int, load_images: bool) -> Episode:
        import pyarrow.compute as pc

        meta = self.episode_meta(episode_index)
        length = int(meta["length"])
        path = self.data_path(episode_index)
        if length <= 0:
            raise DatasetError(f"empty episode (length {length})", path, episode_index)
        table = self._data_table(path, episode_index)
        missing = [c for c in self._required_columns() if c not in table.column_names]
        if missing:
            raise DatasetError(f"missing columns {missing} (declared in meta/info.json features)", path, episode_index)
        rows = table.filter(pc.equal(table.column("episode_index"), episode_index))
        if rows.num_rows != length:
            raise DatasetError(f"{rows.num_rows} data rows but episode metadata says length {length}", path, episode_index)
        frame_index = rows.column("frame_index").to_numpy()
        if not np.array_equal(frame_index, np.arange(length)):
            raise DatasetError("frame_index is not 0..length-1 in order", path, episode_index)
        state = _fixed_list_to_numpy(rows, "observation.state", path, episode_index)
        action = _action_or_empty(rows, path, episode_index)
        task_idx = rows.column("task_index").to_numpy()
        if task_idx.min() < 0 or task_idx.max() >= len(self.tasks):
            raise DatasetError(f"task_index out of range 0..{len(self.tasks) - 1}", path, episode_index)
        subtasks = None
        if self.subtasks is not None and "subtask_index" in rows.column_names:
            sub_idx = rows.column("subtask_index").to_numpy()
            if sub_idx.min() < 0 or sub_idx.max() >= len(self.subtasks):
                raise DatasetError(f"subtask_index out of range 0..{len(self.subtasks) - 1}", path, episode_index)
            subtasks = [self.subtasks[i] for i in sub_idx]
        images: dict[str, np.ndarray] = {}
        if load_images:
            for key in self.image_keys:
                images[key] = decode_parquet_images(rows, key, path, episode_index)
            for key in self.video_keys:
                vpath = self.video_path(episode_index, key)
                t0 = float(meta[f"videos/{key}/from_timestamp"])
                t1 = float(meta[f"videos/{key}/to_timestamp"])
                frames = decode_frames(vpath, self.fps, t0, t1, episode_index)
                if len(frames) != length:
                    raise DatasetError(f"video has {len(frames)} frames for this episode, data has {length}", vpath, episode_index)
                images[key] = frames
        return Episode(
            task=self.tasks[int(task_idx[0])],
            images=images,
            state=state,
            action=action,
            subtasks=subtasks,
            episode_index=episode_index,
            timestamp=rows.column("timestamp").to_numpy().astype(np.float32),
        )

    def episode(self, episode_index: int, load_images: bool = True) -> Episode:
        """One episode; always raises DatasetError on bad data (``iter_episodes`` applies on_error)."""
        return self._load_episode(episode_index, load_images)


def _action_or_empty(rows, path: Path, episode_index: int) -> np.ndarray:
    """The ``action`` column, or (T, 0) for a dataset that records none (training does not read it)."""
    if "action" not in rows.column_names:
        return np.zeros((rows.num_rows, 0), np.float32)
    return _fixed_list_to_numpy(rows, "action", path, episode_index)


def _fixed_list_to_numpy(rows, name: str, path: Path, episode_index: int) -> np.ndarray:
    """A list<float> column -> (N, D) float32; ragged or non-finite rows are a DatasetError."""
    try:
        arr = np.asarray(rows.column(name).to_pylist(), dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"column {name!r} has rows of different lengths or nulls", path, episode_index) from exc
    if arr.ndim == 1:  # a feature of shape [1] is a plain number per frame (LeRobot writes a Value, not a list)
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DatasetError(f"column {name!r} is not a vector per frame (shape {arr.shape})", path, episode_index)
    if not np.isfinite(arr).all():
        raise DatasetError(f"column {name!r} has non-finite values", path, episode_index)
    return arr
