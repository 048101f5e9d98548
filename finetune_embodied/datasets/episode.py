"""One episode in memory: what writers take and readers return, whatever the on-disk version."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Episode", "IMAGE_KEY_PREFIX"]

IMAGE_KEY_PREFIX = "observation.images."


@dataclass
class Episode:
    """T frames of one demonstration.

    ``images`` maps the full feature key (``observation.images.<camera>``) to (T, H, W, 3) uint8.
    ``subtasks`` is the step sentence active at each frame (None when the dataset has no labels);
    a subtask ends at the last frame carrying its text.
    """

    task: str
    images: dict[str, np.ndarray]
    state: np.ndarray  # (T, S) float32
    action: np.ndarray  # (T, A) float32
    subtasks: list[str] | None = None  # (T,) step text per frame
    episode_index: int = -1  # assigned by the writer / set by the reader
    timestamp: np.ndarray | None = None  # (T,) float32 seconds from the episode start
    extra: dict[str, object] = field(default_factory=dict)  # e.g. seed, mistakes (not written to disk)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task.strip():
            raise ValueError(f"Episode.task must be a non-empty string, got {self.task!r}")
        self.state = np.asarray(self.state, dtype=np.float32)
        self.action = np.asarray(self.action, dtype=np.float32)
        if self.state.ndim != 2 or self.action.ndim != 2:
            raise ValueError(f"Episode.state/action must be (T, D), got {self.state.shape} and {self.action.shape}")
        n = len(self.state)
        if n == 0:
            raise ValueError("Episode has no frames")
        if len(self.action) != n:
            raise ValueError(f"Episode: {n} states but {len(self.action)} actions")
        for key, frames in self.images.items():
            if not key.startswith("observation.image"):  # observation.images.<cam>, or LeRobot's single observation.image
                raise ValueError(f"Episode.images key {key!r} must start with {IMAGE_KEY_PREFIX!r}")
            if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
                got = getattr(frames, "shape", type(frames).__name__), getattr(frames, "dtype", None)
                raise ValueError(f"Episode.images[{key!r}] must be (T, H, W, 3) uint8, got {got}")
            if len(frames) != n:
                raise ValueError(f"Episode.images[{key!r}] has {len(frames)} frames but state has {n}")
        if self.subtasks is not None:
            if len(self.subtasks) != n:
                raise ValueError(f"Episode.subtasks has {len(self.subtasks)} entries for {n} frames")
            bad = [s for s in self.subtasks if not isinstance(s, str) or not s]
            if bad:
                raise ValueError(f"Episode.subtasks entries must be non-empty strings, got {bad[0]!r}")
        if self.timestamp is not None:
            self.timestamp = np.asarray(self.timestamp, dtype=np.float32)
            if self.timestamp.shape != (n,):
                raise ValueError(f"Episode.timestamp must be ({n},), got {self.timestamp.shape}")

    @property
    def length(self) -> int:
        return int(len(self.state))

    @property
    def camera_keys(self) -> list[str]:
        return list(self.images)

    def subtask_segments(self) -> list[tuple[str, int, int]]:
        """(text, first_frame, last_frame) for each run of equal consecutive subtask labels."""
        if self.subtasks is None:
            return []
        segs: list[tuple[str, int, int]] = []
        start = 0
        for i in range(1, self.length + 1):
            if i == self.length or self.subtasks[i] != self.subtasks[start]:
                segs.append((self.subtasks[start], start, i - 1))
                start = i
        return segs
