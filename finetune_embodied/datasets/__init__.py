"""LeRobot datasets with pyarrow + PyAV: v3.0 writer/reader, v2.1 reader, bad-data policy.

``open_dataset(root)`` picks the reader from ``meta/info.json``'s ``codebase_version``.
"""

from __future__ import annotations

from pathlib import Path

from .episode import IMAGE_KEY_PREFIX, Episode
from .lerobot_v3 import LeRobotV3Reader, LeRobotV3Writer, load_info, write_dataset
from .lerobot_v21 import LeRobotV21Reader
from .validation import DatasetError, SkipReport

__all__ = [
    "DatasetError",
    "Episode",
    "IMAGE_KEY_PREFIX",
    "LeRobotV21Reader",
    "LeRobotV3Reader",
    "LeRobotV3Writer",
    "SkipReport",
    "open_dataset",
    "write_dataset",
]


def open_dataset(root: str | Path, on_error: str = "raise", first_episodes: int = 0) -> LeRobotV3Reader | LeRobotV21Reader:
    """A reader for the LeRobot dataset at ``root`` (v3.x or v2.x); ``first_episodes`` > 0 reads only
    that many, the first in index order."""
    info = load_info(Path(root))
    version = str(info["codebase_version"])
    reader: LeRobotV3Reader | LeRobotV21Reader
    if version.startswith("v3"):
        reader = LeRobotV3Reader(root, on_error=on_error)
    elif version.startswith("v2"):
        reader = LeRobotV21Reader(root, on_error=on_error)
    else:
        raise DatasetError(f"unsupported codebase_version {version!r} (supported: v2.x, v3.x)", Path(root) / "meta/info.json")
    reader.keep_first(first_episodes)
    return reader
