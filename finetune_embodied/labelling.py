"""Step labels for episodes that have none: keyframes from what the data has, texts from a template.

Most recorded datasets carry one task string per episode and no per-frame step labels. The
guidance model trains on steps (a sentence and the frame where it ends), so ``emu-guide train``
labels such episodes first (``label.when: missing``, the default; docs/datasets.md):

1. **State columns** are mapped by the dataset's ``observation.state`` names (``label.gripper``,
   ``label.position``, ``label.joints`` override): a gripper column (``gripper``, ``finger``,
   ``claw``, ``jaw`` in its name), an end-effector xyz triple (``ee_x``/``eef_pos_x``/``tcp_x``/
   ``x``... ), joint columns (``joint``, ``shoulder``, ``elbow``, ``wrist``...). Unnamed columns are
   never guessed to be xyz or a gripper: they count as joints (motion only).
2. **Keyframes**, by the first cue in ``label.cues`` that the episode has:
   ``gripper``: a grasp or release (the gripper column crossing the middle of its range over the
   dataset) made with the arm still ends a step where the lift away from it ends; a grasp held
   below the arm's empty-hand travel height is one step with its release
   (:func:`finetune_embodied.keyframes.detect_keyframes`); ``motion``: the arm (xyz, else joints
   scaled by their spread) arrives and rests for ``label.min_pause`` frames
   (:func:`~finetune_embodied.keyframes.motion_pauses`); ``image``: the same pauses in how much the
   camera frame changes. The last frame always ends the last step.
3. **Texts**: step i of n is ``label.step_text`` with ``{task}``, ``{i}``, ``{n}`` and ``{event}``
   (grasp, release, pause, end).

What a model trained on these labels can say: the next step's *subgoal image* (the keyframe) and a
step text of the template's form. It cannot name objects or verbs the data never had: with the
default template the text is "<task>: step i of n", which the planner's sentence parser does not
turn into a skill (docs/datasets.md, "What labelled training gives").

``python -m finetune_embodied.labelling DATASET`` prints each episode's keyframes and cue and, for
a dataset that has labels, precision/recall of the detected step ends against them.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from finetune_embodied.datasets.episode import Episode
from finetune_embodied.keyframes import (
    KeyframeConfig,
    detect_keyframes,
    gripper_changes,
    match_keyframes,
    motion_pauses,
)

__all__ = ["EpisodeLabels", "LabelError", "Labeller", "StateColumns", "add_arguments", "label_dataset", "main",
           "map_state_columns"]

GRIPPER_RE = re.compile(r"grip|finger|claw|jaw", re.I)
JOINT_RE = re.compile(r"joint|shoulder|elbow|wrist|waist|forearm|(^|[_.])(pan|lift|flex|roll|pitch|yaw)([_.]|$)", re.I)
XYZ_RE = re.compile(r"^(.*?)[_.\- ]?(x|y|z)$", re.I)
XYZ_PREFIX_RE = re.compile(r"^$|ee|eef|end_?effector|tcp|hand|tool|tip|pos", re.I)
EVENTS = {"close": "grasp", "open": "release"}


class LabelError(ValueError):
    """Labelling cannot proceed (a column that does not exist, no cue at all); the message says what to set."""


@dataclass
class StateColumns:
    gripper: list[int]  # averaged into one gripper signal
    position: list[int]  # x, y, z of the end effector (3 or none)
    joints: list[int]  # motion signal when there is no position
    names: list[str]

    def describe(self) -> str:
        def n(ix):
            return ",".join(self.names[i] if i < len(self.names) else f"#{i}" for i in ix) or "-"

        return f"gripper={n(self.gripper)} position={n(self.position)} joints={n(self.joints)}"


def _column(ref, names: list[str], dim: int, what: str) -> int:
    """A state column from its name or index (int or digit string)."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        i = int(ref)
        if not 0 <= i < dim:
            raise LabelError(f"label.{what}: column {i} out of range (state has {dim} columns)")
        return i
    if ref in names:
        return names.index(ref)
    raise LabelError(f"label.{what}: no state column {ref!r} (names: {names or 'none; give indices 0..' + str(dim - 1)})")


def map_state_columns(names: list[str], dim: int, gripper: str = "", position=(), joints=()) -> StateColumns:
    """Which ``observation.state`` columns are the gripper, the end-effector xyz and joints: from the
    overrides when given, else from the names (never from positions alone)."""
    names = list(names) if len(names) == dim else []
    if gripper == "none":
        grip: list[int] = []
    elif gripper:
        grip = [_column(gripper, names, dim, "gripper")]
    else:
        grip = [i for i, n in enumerate(names) if GRIPPER_RE.search(n)]
    if position:
        pos = [_column(c, names, dim, "position") for c in position]
    else:
        groups: dict[str, dict[str, int]] = {}
        for i, n in enumerate(names):
            m = XYZ_RE.match(n)
            if m and i not in grip:
                groups.setdefault(m.group(1).lower(), {})[m.group(2).lower()] = i
        full = [(p, g) for p, g in groups.items() if len(g) == 3 and XYZ_PREFIX_RE.search(p)]
        pos = [full[0][1][a] for a in "xyz"] if full else []
    if joints:
        jts = [_column(c, names, dim, "joints") for c in joints]
    else:
        named = [i for i, n in enumerate(names) if JOINT_RE.search(n) and i not in grip and i not in pos]
        jts = named or ([i for i in range(dim) if i not in grip and i not in pos] if not pos else [])
    return StateColumns(grip, pos, jts, names)


@dataclass
class EpisodeLabels:
    episode_index: int
    keyframes: list[int]  # the last frame of each step, increasing; the last is the episode's last frame
    events: list[str]  # per keyframe: grasp, release, pause, end
    cue: str  # gripper, motion, image or none (one step: the whole episode)
    texts: list[str] = field(default_factory=list)  # step text per keyframe

    def per_frame(self, length: int) -> list[str]:
        out, start = [], 0
        for text, end in zip(self.texts, self.keyframes):
            out += [text] * (end + 1 - start)
            start = end + 1
        if len(out) != length:
            raise LabelError(f"episode {self.episode_index}: labels cover {len(out)} of {length} frames")
        return out


def image_motion(frames: np.ndarray, size: int = 32) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 1) cumulative mean absolute change of a small grey copy: a signal whose
    speed is how much the picture changes, so image pauses are found like arm pauses."""
    import cv2

    grey = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (size, size), interpolation=cv2.INTER_AREA)
                     for f in frames]).astype(np.float32)
    change = np.zeros(len(grey))
    if len(grey) > 1:
        change[1:] = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
    return np.cumsum(change)[:, None]


class Labeller:
    """Labels episodes of one dataset; built from the state of every episode (gripper range and
    joint spread are dataset-wide, so one episode that never opens the gripper has no gripper cue)."""

    def __init__(self, cfg, state_names: list[str], states: list[np.ndarray], camera_key: str | None) -> None:
        self.cfg = cfg
        if not states:
            raise LabelError("no episodes to label")
        dim = states[0].shape[1]
        self.cols = map_state_columns(state_names, dim, cfg.gripper, cfg.position, cfg.joints)
        allrows = np.concatenate(states)
        self.grip_range = None
        if self.cols.gripper:
            g = allrows[:, self.cols.gripper].mean(axis=1)
            lo, hi = float(g.min()), float(g.max())
            if hi - lo > 1e-6:
                self.grip_range = (lo, hi)
        spread = allrows[:, self.cols.joints].std(axis=0) if self.cols.joints else np.zeros(0)
        self.joint_scale = np.where(spread > 1e-9, spread, 1.0)
        self.camera_key = camera_key
        wanted = {"grasp": "close", "release": "open"}
        self.kcfg = KeyframeConfig(gripper_threshold=0.5, rest_frac=cfg.rest_frac, min_gap=cfg.min_gap,
                                   events=tuple(wanted[e] for e in cfg.events))

    def needs_images(self) -> bool:
        """Whether an episode no state cue labels may fall through to the image cue (frames decoded)."""
        return "image" in self.cfg.cues and self.camera_key is not None

    def _motion(self, state: np.ndarray) -> np.ndarray | None:
        if self.cols.position:
            return state[:, self.cols.position].astype(np.float64)
        if self.cols.joints:
            return state[:, self.cols.joints].astype(np.float64) / self.joint_scale
        return None

    def _still_after(self, signal: np.ndarray | None) -> np.ndarray:
        """still[t]: nothing moves after frame t (speed at rest to the end); the last frame ends that step."""
        if signal is None or len(signal) < 2:
            return np.zeros(0 if signal is None else len(signal), bool)
        sig = np.asarray(signal, np.float64).reshape(len(signal), -1)
        speed = np.r_[0.0, np.linalg.norm(np.diff(sig, axis=0), axis=1)]
        moving = speed > self.cfg.rest_frac * max(speed.max(), 1e-12)
        later = np.r_[np.cumsum(moving[::-1])[::-1][1:], 0]  # moving frames after t
        return later == 0

    def _finish(self, keys: list[int], events: dict[int, str], n: int, still: np.ndarray) -> tuple[list[int], list[str]]:
        keys = sorted({k for k in keys if 0 <= k < n - 1 and not (len(still) and still[k])} | {n - 1})
        merged: list[int] = []
        for k in keys:
            if merged and k - merged[-1] < self.cfg.min_gap:
                merged[-1] = k
            else:
                merged.append(k)
        return merged, [events.get(k, "pause") if k != n - 1 else "end" for k in merged]

    def label(self, ep: Episode, frames: np.ndarray | None = None) -> EpisodeLabels:
        """Keyframes, events and step texts of one episode (``frames``: its camera, for the image cue)."""
        n = ep.length
        state = ep.state
        motion = self._motion(state)
        result: tuple[list[int], dict[int, str], str] | None = None
        signal = None
        for cue in self.cfg.cues:
            if cue == "gripper" and self.grip_range is not None:
                lo, hi = self.grip_range
                g = (state[:, self.cols.gripper].mean(axis=1) - lo) / (hi - lo)
                if self.cfg.gripper_closed == "low":
                    g = 1.0 - g
                mot = motion if motion is not None else np.zeros((n, 1))
                speed = np.r_[0.0, np.linalg.norm(np.diff(mot, axis=0), axis=1)]
                changes = [c for c in gripper_changes(g > 0.5, speed, self.kcfg.still_frac) if c[1] in self.kcfg.events]
                if not changes:
                    continue
                kcfg = self.kcfg if self.cols.position else dataclasses.replace(self.kcfg, up_axis=None)
                keys = detect_keyframes(g, mot, kcfg)
                signal = np.c_[mot, g]
                events = {}
                for k in keys:  # the gripper change each keyframe follows
                    before = [e for t, e in changes if t <= k]
                    events[k] = EVENTS[before[-1]] if before else "pause"
                result = (keys, events, "gripper")
            elif cue == "motion" and motion is not None:
                keys = motion_pauses(motion, self.cfg.rest_frac, self.cfg.min_pause)
                if not keys:
                    continue
                result, signal = (keys, {}, "motion"), motion
            elif cue == "image" and frames is not None:
                signal = image_motion(frames)
                keys = motion_pauses(signal, self.cfg.rest_frac, self.cfg.min_pause)
                if not keys:
                    continue
                result = (keys, {}, "image")
            if result is not None:
                break
        keys, events, cue = result if result is not None else ([], {}, "none")
        keyframes, names = self._finish(keys, events, n, self._still_after(signal if result is not None else None))
        texts = [self.cfg.step_text.format(task=ep.task, i=i + 1, n=len(keyframes), event=e)
                 for i, e in enumerate(names)]
        return EpisodeLabels(ep.episode_index, keyframes, names, cue, texts)


def _true_ends(ep: Episode) -> list[int]:
    return [last for _, _, last in ep.subtask_segments()]


@dataclass
class LabelReport:
    labels: dict[int, EpisodeLabels]
    columns: str
    cues: Counter
    tolerance: int = 2
    scored: int = 0  # episodes that had labels to compare with
    true_positives: int = 0
    detected: int = 0
    actual: int = 0

    @property
    def precision(self) -> float:
        return self.true_positives / self.detected if self.detected else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.actual if self.actual else float("nan")

    def summary(self) -> str:
        n = len(self.labels)
        steps = sum(len(v.keyframes) for v in self.labels.values()) / max(n, 1)
        cues = ", ".join(f"{k} {v}" for k, v in sorted(self.cues.items()))
        line = f"[label] {n} episode(s) labelled ({cues}); {steps:.1f} steps/episode; columns {self.columns}"
        if self.scored:
            line += (f"; against their own labels (+-{self.tolerance} frames): precision {self.precision:.2f} "
                     f"recall {self.recall:.2f} over {self.actual} step ends")
        return line


def label_dataset(reader, cfg, camera_key: str | None, only_missing: bool = True, tolerance: int = 2,
                  max_episodes: int = 0) -> LabelReport:
    """Label the episodes of an open dataset reader. ``only_missing``: episodes that already have step
    labels keep them (and are not in the result); else every episode is labelled and, where it had
    labels, scored against them (precision/recall of step ends within ``tolerance`` frames)."""
    eps = list(reader.iter_episodes(load_images=False, max_episodes=max_episodes))
    if not eps:
        raise LabelError(f"dataset {reader.root}: no readable episodes to label")
    labeller = Labeller(cfg, reader.state_names(), [e.state for e in eps], camera_key)
    report = LabelReport({}, labeller.cols.describe(), Counter(), tolerance)
    for ep in eps:
        if only_missing and ep.subtasks is not None:
            continue
        lab = labeller.label(ep)
        if lab.cue == "none" and labeller.needs_images():
            frames = reader.episode(ep.episode_index, load_images=True).images.get(camera_key)
            lab = labeller.label(ep, frames)
        report.labels[ep.episode_index] = lab
        report.cues[lab.cue] += 1
        if ep.subtasks is not None:
            s = match_keyframes(lab.keyframes, _true_ends(ep), tolerance)
            report.scored += 1
            report.true_positives += s.true_positives
            report.detected += s.detected
            report.actual += s.actual
    return report


def apply_labels(episodes, labels: dict[int, EpisodeLabels]):
    """Yield episodes with ``subtasks`` set from ``labels`` (episodes not in it pass unchanged)."""
    for ep in episodes:
        lab = labels.get(ep.episode_index)
        if lab is not None:
            ep.subtasks = lab.per_frame(ep.length)
        yield ep


def add_arguments(p) -> None:
    """Arguments of ``python -m finetune_embodied.labelling`` (and of an ``emu-guide label`` subcommand)."""
    p.add_argument("dataset")
    p.add_argument("--camera", default="", help="camera for the image cue (several cameras: required)")
    p.add_argument("--tolerance", type=int, default=2, help="frames within which a detected step end counts")
    p.add_argument("--max-episodes", type=int, default=0)
    p.add_argument("--json", help="write per-episode keyframes and the scores here")
    p.add_argument("overrides", nargs="*", metavar="label.KEY=VALUE")


def _parse(argv: list[str] | None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m finetune_embodied.labelling",
                                description="find step ends (keyframes) in a LeRobot dataset and score them against its labels")
    add_arguments(p)
    return p.parse_intermixed_args(argv)


def main(args=None) -> int:
    """Label a dataset and print the keyframes (and precision/recall where it has labels).
    ``args``: parsed arguments (a subcommand) or an argv list / None (``python -m``)."""
    import json

    from finetune_embodied.datasets import DatasetError, open_dataset
    from finetune_embodied.train.config import ConfigError, LabelConfig, _build, apply_overrides

    if args is None or isinstance(args, list):
        args = _parse(args)
    try:
        given = apply_overrides({}, list(args.overrides))
        values = given.pop("label", {}) or {}
        values.update(given)  # "cues=[motion]" and "label.cues=[motion]" both set label.cues
        cfg = _build(LabelConfig, values, "label")
        reader = open_dataset(args.dataset)
        from finetune_embodied.train.stages.tokenizer_stage import camera_key

        key = camera_key(reader.camera_keys, args.camera, args.dataset) if reader.camera_keys else None
        report = label_dataset(reader, cfg, key, only_missing=False, tolerance=args.tolerance,
                               max_episodes=args.max_episodes)
    except (ConfigError, DatasetError, LabelError) as exc:
        print(f"labelling: {exc}")
        return 2
    for lab in report.labels.values():
        print(f"episode {lab.episode_index}: {lab.cue:7s} keyframes {lab.keyframes}")
    print(report.summary())
    if args.json:
        out = {"dataset": args.dataset, "columns": report.columns, "tolerance": report.tolerance,
               "precision": report.precision, "recall": report.recall, "step_ends": report.actual,
               "episodes": {i: {"cue": v.cue, "keyframes": v.keyframes, "events": v.events}
                            for i, v in report.labels.items()}}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
