"""Datasets laid out the way LeRobot writes them, built with pyarrow only (no lerobot install).

What LeRobot 0.4.x does differently from our writer, and these fixtures reproduce (read from
huggingface/lerobot ``lerobot_dataset.py``/``utils.py``, v0.4.4 and main):

- ``meta/tasks.parquet`` is ``pd.DataFrame({"task_index": ...}, index=tasks).to_parquet()``: the task
  text is an *unnamed* pandas index, stored as column ``__index_level_0__`` with ``b"pandas"``
  schema metadata naming it in ``index_columns``; ``meta/subtasks.parquet`` likewise (LeRobot looks
  both up by row position: ``tasks.iloc[i].name``).
- data files come from ``datasets.Dataset`` (``b"huggingface"`` schema metadata; a vector feature is
  ``Sequence(Value("float32"), length=n)``, written here as a variable-size ``list<float>``).
- the episodes parquet carries the pandas index of its frame (``__index_level_0__``).
- videos: one mp4 per camera per file, episodes concatenated (LeRobot's default codec is AV1:
  ``codec="libsvtav1"`` writes it).
- v2.1: ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, ``meta/episodes_stats.jsonl``, one parquet and
  one mp4 per episode under ``chunk-XXX`` folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from finetune_embodied.datasets import Episode
from finetune_embodied.datasets.lerobot_v3 import LeRobotV3Writer
from finetune_embodied.datasets.video import VideoWriter

ARM_NAMES = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]


def arm_episode(seed: int, task: str, steps: int = 3, size: tuple[int, int] = (32, 32), cameras=("front",),
                labelled: bool = True) -> tuple[Episode, list[int]]:
    """A toy arm: per step the gripper (last column) closes or opens, the joints move to a new target
    over 4-6 frames, then rest 3 frames. A square drawn where the arm is makes the camera
    see the motion. Returns the episode and the true step ends (each arrival; the last frame last)."""
    rng = np.random.default_rng(seed)
    pose = rng.uniform(-1, 1, 5)
    grip = 0.0
    states, ends = [np.r_[pose, grip]], []
    for _ in range(steps):
        grip = 1.0 - grip  # grasp or release, then carry
        states.append(np.r_[pose, grip])
        target = rng.uniform(-1, 1, 5)
        m = int(rng.integers(4, 7))
        for j in range(1, m + 1):
            states.append(np.r_[pose + (target - pose) * j / m, grip])
        pose = target
        ends.append(len(states) - 1)
        for _ in range(3):
            states.append(np.r_[pose, grip])
    ends[-1] = len(states) - 1  # the last step ends with the episode (the arm rests until then)
    state = np.asarray(states, np.float32)
    n = len(state)
    h, w = size
    images = {}
    for c, cam in enumerate(cameras):
        frames = np.full((n, h, w, 3), 30 + 40 * c, np.uint8)
        for t in range(n):
            y = int((state[t, 0] + 1) / 2 * (h - 8))
            x = int((state[t, 1] + 1) / 2 * (w - 8))
            frames[t, y : y + 8, x : x + 8] = (220, 80 + 100 * int(state[t, 5]), 40)
        images[f"observation.images.{cam}"] = frames
    subtasks = None
    if labelled:
        subtasks, start = [], 0
        for k, e in enumerate(ends):
            subtasks += [f"move to place {k + 1}"] * (e + 1 - start)
            start = e + 1
    ep = Episode(task=task, images=images, state=state, action=np.diff(state, axis=0, prepend=state[:1]),
                 subtasks=subtasks)
    return ep, ends


def _pandas_meta(columns: list[tuple[str, str]], index_col: str | None, index_name: str | None) -> bytes:
    cols = [{"name": c, "field_name": c, "pandas_type": t, "numpy_type": "object" if t == "unicode" else t,
             "metadata": None} for c, t in columns]
    if index_col is not None:
        cols.append({"name": index_name, "field_name": index_col, "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None})
    meta = {"index_columns": [index_col] if index_col else [], "column_indexes": [], "columns": cols,
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    return json.dumps(meta).encode()


def write_pandas_indexed(path: Path, names: list[str], column: str, index_name: str | None = None) -> None:
    """What ``pd.DataFrame({column: range(n)}, index=pd.Index(names, name=index_name)).to_parquet(path)``
    writes: unnamed index -> column ``__index_level_0__``; named -> a column of that name."""
    index_col = index_name or "__index_level_0__"
    table = pa.table({column: pa.array(range(len(names)), pa.int64()), index_col: pa.array(names, pa.string())})
    table = table.replace_schema_metadata({b"pandas": _pandas_meta([(column, "int64")], index_col, index_name)})
    pq.write_table(table, path)


def _hf_features(table: pa.Table) -> bytes:
    feats = {}
    for f in table.schema:
        if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type):
            feats[f.name] = {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"}
        else:
            feats[f.name] = {"dtype": str(f.type).replace("float", "float32").replace("float3232", "float32"), "_type": "Value"}
    return json.dumps({"info": {"features": feats}}).encode()


def _as_hf_table(table: pa.Table) -> pa.Table:
    """Vector columns as variable-size lists, ``huggingface`` metadata (a ``datasets`` parquet)."""
    cols = {}
    for f in table.schema:
        col = table.column(f.name)
        if pa.types.is_fixed_size_list(f.type):
            col = pa.array(col.to_pylist(), pa.list_(pa.float32()))
        cols[f.name] = col
    out = pa.table(cols)
    return out.replace_schema_metadata({b"huggingface": _hf_features(out)})


def lerobotify_v3(root: Path, subtask_index_name: str | None = None) -> Path:
    """Rewrite the metadata of a v3 folder our writer made into what LeRobot's writer leaves."""
    root = Path(root)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    order = np.argsort(tasks.column("task_index").to_numpy())
    write_pandas_indexed(root / "meta/tasks.parquet", [tasks.column("task").to_pylist()[i] for i in order], "task_index")
    sub = root / "meta/subtasks.parquet"
    if sub.is_file():
        t = pq.read_table(sub)
        order = np.argsort(t.column("subtask_index").to_numpy())
        write_pandas_indexed(sub, [t.column("subtask").to_pylist()[i] for i in order], "subtask_index", subtask_index_name)
    for path in sorted((root / "data").rglob("*.parquet")):
        pq.write_table(_as_hf_table(pq.read_table(path)), path)
    for path in sorted((root / "meta/episodes").rglob("*.parquet")):
        t = pq.read_table(path)
        t = t.append_column("__index_level_0__", pa.array(t.column("episode_index").to_numpy()))
        t = t.replace_schema_metadata({b"pandas": _pandas_meta([(c, "object") for c in t.column_names[:-1]],
                                                               "__index_level_0__", None)})
        pq.write_table(t, path)
    return root


def write_lerobot_v3(root: Path, episodes: list[Episode], fps: int = 10, state_names=ARM_NAMES, codec: str = "libx264",
                     max_episodes_per_file: int = 2, subtask_index_name: str | None = None) -> Path:
    """A v3.0 dataset as LeRobot's writer leaves it (see the module docstring)."""
    first = episodes[0]
    cams = {k: tuple(v.shape[1:3]) for k, v in first.images.items()}
    with LeRobotV3Writer(root, fps, cams, list(state_names), [f"a{i}" for i in range(first.action.shape[1])],
                         robot_type="so100_follower", with_subtasks=first.subtasks is not None,
                         max_episodes_per_file=max_episodes_per_file, codec=codec) as w:
        for ep in episodes:
            w.add_episode(ep)
    return lerobotify_v3(root, subtask_index_name)


def write_lerobot_v21(root: Path, episodes: list[Episode], fps: int = 10, state_names=ARM_NAMES, chunks_size: int = 2) -> Path:
    """A v2.1 dataset: one parquet and one mp4 per episode, jsonl metadata (LeRobot's LEGACY_* paths)."""
    root = Path(root)
    (root / "meta").mkdir(parents=True)
    tasks: dict[str, int] = {}
    ep_lines, stats_lines, index = [], [], 0
    cams = list(episodes[0].images)
    for i, ep in enumerate(episodes):
        chunk, n = i // chunks_size, ep.length
        ti = tasks.setdefault(ep.task, len(tasks))
        table = pa.table({
            "observation.state": pa.array(ep.state.tolist(), pa.list_(pa.float32())),
            "action": pa.array(ep.action.tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / fps),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, i, dtype=np.int64)),
            "index": pa.array(np.arange(index, index + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, ti, dtype=np.int64)),
        })
        table = table.replace_schema_metadata({b"huggingface": _hf_features(table)})
        index += n
        path = root / f"data/chunk-{chunk:03d}/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for key in cams:
            h, w = ep.images[key].shape[1:3]
            vw = VideoWriter(root / f"videos/chunk-{chunk:03d}/{key}/episode_{i:06d}.mp4", fps, w, h)
            vw.write(ep.images[key])
            vw.close()
        ep_lines.append({"episode_index": i, "tasks": [ep.task], "length": n})
        stats_lines.append({"episode_index": i, "stats": {"observation.state": {"mean": ep.state.mean(0).tolist()}}})
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ep_lines))
    (root / "meta/episodes_stats.jsonl").write_text("".join(json.dumps(e) + "\n" for e in stats_lines))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": v, "task": k}) + "\n" for k, v in tasks.items()))
    feats = {}
    for key in cams:
        h, w = episodes[0].images[key].shape[1:3]
        feats[key] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                      "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.fps": fps}}
    feats["observation.state"] = {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)}
    feats["action"] = {"dtype": "float32", "shape": [episodes[0].action.shape[1]], "names": None}
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
    info = {"codebase_version": "v2.1", "robot_type": "so100", "total_episodes": len(episodes), "fps": fps,
            "chunks_size": chunks_size, "total_chunks": (len(episodes) + chunks_size - 1) // chunks_size,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": feats}
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return root


def write_lerobot_v3_images(root: Path, episodes: list[Episode], key: str = "observation.image", fps: int = 10) -> Path:
    """A v3.0 dataset recorded with ``use_videos=False``: each frame a PNG in the data parquet (a
    ``datasets`` Image struct of ``bytes`` and ``path``), no videos/ folder. Every episode's frames
    are taken from its first camera and stored under ``key`` (LeRobot's pusht uses ``observation.image``)."""
    import cv2

    bare = [Episode(task=e.task, images={}, state=e.state, action=e.action, subtasks=e.subtasks) for e in episodes]
    write_lerobot_v3(root, bare, fps=fps)
    frames = {i: next(iter(e.images.values())) for i, e in enumerate(episodes)}
    for path in sorted((root / "data").rglob("*.parquet")):
        t = pq.read_table(path)
        cells = []
        for ep, fi in zip(t.column("episode_index").to_pylist(), t.column("frame_index").to_pylist()):
            ok, png = cv2.imencode(".png", cv2.cvtColor(frames[ep][fi], cv2.COLOR_RGB2BGR))
            cells.append({"bytes": png.tobytes(), "path": f"frame_{fi:06d}.png"})
        col = pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        pq.write_table(t.append_column(key, col).replace_schema_metadata(t.schema.metadata), path)
    info = json.loads((root / "meta/info.json").read_text())
    h, w = frames[0].shape[1:3]
    info["features"][key] = {"dtype": "image", "shape": [h, w, 3], "names": ["height", "width", "channel"]}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root
