"""Bad-data policy shared by every dataset reader.

A problem with one episode (corrupt video, missing columns, mismatched lengths, empty episode) is
either raised as :class:`DatasetError` naming the file and the episode, or - with
``on_error="skip"`` - counted in a :class:`SkipReport` that the caller prints. Never dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DatasetError", "feature_names", "ON_ERROR_CHOICES", "SkipReport", "SkippedEpisode", "check_on_error"]

log = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("raise", "skip")
NON_DATA_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index", "subtask_index")


def feature_names(feature: dict) -> list[str]:
    """A feature's per-dimension names: a list, or a dict of lists (LeRobot v2.0's ``{"motors": [...]}``)
    flattened in order; [] when there are none."""
    names = feature.get("names") if isinstance(feature, dict) else None
    if isinstance(names, dict):
        flat: list[str] = []
        for v in names.values():
            flat += [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        return flat
    if isinstance(names, (list, tuple)):
        return [str(x) for x in names]
    return []


class DatasetError(ValueError):
    """A dataset file or episode is unusable. The message names the file and the episode."""

    def __init__(self, message: str, path: str | Path | None = None, episode_index: int | None = None):
        parts = []
        if path is not None:
            parts.append(f"file {path}")
        if episode_index is not None:
            parts.append(f"episode {episode_index}")
        prefix = (", ".join(parts) + ": ") if parts else ""
        super().__init__(prefix + message)
        self.path = None if path is None else str(path)
        self.episode_index = episode_index
        self.reason = message


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error


@dataclass(frozen=True)
class SkippedEpisode:
    episode_index: int
    path: str | None
    reason: str


@dataclass
class SkipReport:
    """Episodes a reader skipped (``on_error="skip"``), with the reason for each."""

    skipped: list[SkippedEpisode] = field(default_factory=list)

    def add(self, err: DatasetError, episode_index: int) -> None:
        # One entry per episode, even if the same episode fails twice (e.g. re-read).
        if any(s.episode_index == episode_index for s in self.skipped):
            return
        self.skipped.append(SkippedEpisode(episode_index, err.path, err.reason))
        log.warning("skipping %s", err)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return "no episodes skipped"
        lines = [f"{self.count} episode(s) skipped:"]
        lines += [f"  episode {s.episode_index} ({s.path}): {s.reason}" for s in self.skipped]
        return "\n".join(lines)


class EpisodeReaderBase:
    """What every dataset reader shares: the episode index and on_error-aware iteration.

    A subclass sets ``root``, ``features``, ``_episodes`` (episode_index -> metadata row with a ``length``),
    ``episode_indices``, ``on_error`` and ``report`` and implements ``episode(i, load_images)``,
    which always raises DatasetError on bad data; ``iter_episodes`` applies the on_error policy.
    """

    root: Path
    features: dict
    _episodes: dict[int, dict]
    episode_indices: list[int]
    on_error: str
    report: SkipReport

    def episode(self, episode_index: int, load_images: bool = True):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_episodes(self) -> int:
        return len(self.episode_indices)

    def keep_first(self, count: int) -> None:
        """Read only the first ``count`` episodes in index order (0 = all of them)."""
        if count < 0 or count > self.num_episodes:
            raise DatasetError(f"first_episodes={count}, but the dataset has {self.num_episodes} episodes", self.root)
        if count:
            self.episode_indices = self.episode_indices[:count]
            self._episodes = {i: self._episodes[i] for i in self.episode_indices}

    @property
    def num_frames(self) -> int:
        return int(sum(int(r["length"]) for r in self._episodes.values()))

    def state_names(self) -> list[str]:
        """Names of the ``observation.state`` columns from info.json (LeRobot writes a list, or for
        older datasets a dict such as ``{"motors": [...]}``); [] when the dataset names none."""
        return feature_names(self.features.get("observation.state", {}))

    def check_required_features(self, info_path: Path) -> None:
        """A one-line DatasetError when info.json lacks what every episode needs (robot state)."""
        if "observation.state" not in self.features:
            others = sorted(k for k in self.features if k not in NON_DATA_FEATURES)
            raise DatasetError(
                f"no 'observation.state' feature (has {others}); the robot state per frame is needed "
                "(keyframe labelling reads it, episodes carry it)", info_path)

    def iter_episodes(self, load_images: bool = True, max_episodes: int = 0):
        """Episodes in index order; ``max_episodes`` > 0 takes that many, evenly spaced over the
        dataset (a recording is task-major, so every task stays represented)."""
        indices = self.episode_indices
        if max_episodes < 0:
            raise ValueError(f"max_episodes must be >= 0, got {max_episodes}")
        if 0 < max_episodes < len(indices):
            picks = np.linspace(0, len(indices) - 1, max_episodes).round().astype(int)
            indices = [indices[k] for k in sorted(set(picks.tolist()))]
        for i in indices:
            try:
                yield self.episode(i, load_images)
            except DatasetError as err:
                if self.on_error == "raise":
                    raise
                self.report.add(err, i)

    def __len__(self) -> int:
        return self.num_episodes
