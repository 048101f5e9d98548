"""Keyframes for datasets without subtask labels: the frame where each subtask ends.

Two cues from proprioception alone (no images, no labels):

- gripper changes: a grasp (open -> closed) or a release (closed -> open) is the core of a
  manipulation subtask;
- motion: after the gripper changes the arm moves away (lifts) and then comes to rest or turns to
  the next target. The end of that motion - the first end-effector speed minimum after it - is
  where the subtask is finished and what its "subgoal image" should show.

So each selected gripper event yields one keyframe at the first speed minimum after the motion
that follows it (or at the event itself when the arm does not move), and the last frame always
ends the last subtask. ``match_keyframes`` scores detections against true boundaries
(precision/recall within a tolerance), which ``tests/finetune_embodied/test_keyframes.py`` does
on simulated episodes whose subtask boundaries are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KeyframeConfig", "detect_keyframes", "keyframes_from_state", "match_keyframes", "motion_ends", "motion_pauses"]


@dataclass
class KeyframeConfig:
    gripper_threshold: float = 0.5  # gripper value above this = closed
    events: tuple[str, ...] = ("close", "open")  # which gripper changes end a subtask
    rest_frac: float = 0.05  # speed below this fraction of the episode's max speed = at rest
    turn_cos: float = 0.9  # the motion ends where its direction turns by more than acos(turn_cos)
    min_gap: int = 2  # keyframes closer than this (frames) are merged, keeping the later one

    def __post_init__(self) -> None:
        bad = set(self.events) - {"close", "open"}
        if bad or not self.events:
            raise ValueError(f"KeyframeConfig.events must be a non-empty subset of ('close', 'open'), got {self.events}")
        if not 0 <= self.rest_frac < 1 or not -1 <= self.turn_cos <= 1:
            raise ValueError(f"need 0 <= rest_frac < 1 and -1 <= turn_cos <= 1, got {self.rest_frac}, {self.turn_cos}")
        if self.min_gap < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")


def _speed(ee_pos: np.ndarray) -> np.ndarray:
    """(T, 3) positions -> (T,) speed per frame (distance moved into that frame; frame 0 = 0)."""
    speed = np.zeros(len(ee_pos))
    speed[1:] = np.linalg.norm(np.diff(ee_pos, axis=0), axis=1)
    return speed


def motion_ends(ee_pos: np.ndarray, rest_frac: float = 0.05, turn_cos: float = 0.9) -> list[int]:
    """Frames where a motion ends: the arm moved into frame t and the next frame it stops, or turns
    (the direction changes by more than acos(turn_cos)). A slower step in the same direction (the
    arm easing into its target) does not end the motion: the end is where it arrives."""
    pos = np.asarray(ee_pos, dtype=np.float64)
    vel = np.zeros_like(pos)
    vel[1:] = np.diff(pos, axis=0)  # (T, 3) motion into each frame
    speed = np.linalg.norm(vel, axis=1)
    top = speed.max() if len(speed) else 0.0
    if top <= 0:
        return []
    rest = rest_frac * top
    out = []
    for t in range(1, len(pos)):
        if speed[t] <= rest:
            continue
        if t + 1 == len(pos) or speed[t + 1] <= rest:
            out.append(t)
            continue
        cos = float(vel[t] @ vel[t + 1]) / (speed[t] * speed[t + 1])
        if cos < turn_cos:
            out.append(t)
    return out


def motion_pauses(motion: np.ndarray, rest_frac: float = 0.05, min_pause: int = 2) -> list[int]:
    """Frames where the arm arrives somewhere and stays: it moved into frame t and is at rest (speed
    at most ``rest_frac`` of the episode's top speed) for the next ``min_pause`` frames, then moves
    again (a rest until the end is left to the last frame). ``motion`` is (T, D): end-effector xyz, scaled joint angles or any signal that
    moves with the arm; a pause is where a step usually ends (a drawer pulled open, a button pressed)."""
    pos = np.asarray(motion, dtype=np.float64)
    if pos.ndim == 1:
        pos = pos[:, None]
    speed = np.zeros(len(pos))
    if len(pos) > 1:
        speed[1:] = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    top = speed.max() if len(speed) else 0.0
    if top <= 0:
        return []
    rest = speed <= rest_frac * top
    out = []
    for t in range(1, len(pos)):
        if rest[t]:
            continue
        after = rest[t + 1 : t + 1 + min_pause]
        # A rest that lasts to the end is where the last step ends: the last frame marks it.
        if len(after) == min_pause and after.all() and not rest[t + 1 :].all():
            out.append(t)
    return out


def detect_keyframes(gripper: np.ndarray, ee_pos: np.ndarray, config: KeyframeConfig | None = None) -> list[int]:
    """Subtask-end frames of one episode from its gripper signal (T,) and the arm's motion (T, D):
    end-effector positions (D = 3) or any signal that moves with the arm (scaled joint angles)."""
    cfg = config or KeyframeConfig()
    gripper = np.asarray(gripper, dtype=np.float64).reshape(-1)
    ee_pos = np.asarray(ee_pos, dtype=np.float64)
    n = len(gripper)
    if n == 0:
        raise ValueError("detect_keyframes: empty episode")
    if ee_pos.ndim != 2 or len(ee_pos) != n or ee_pos.shape[1] < 1:
        raise ValueError(f"ee_pos must be ({n}, D) to match the gripper signal, got {ee_pos.shape}")
    closed = gripper > cfg.gripper_threshold
    events = []
    for t in range(1, n):
        change = "close" if closed[t] and not closed[t - 1] else "open" if closed[t - 1] and not closed[t] else None
        if change in cfg.events:
            events.append(t)
    stops = motion_ends(ee_pos, cfg.rest_frac, cfg.turn_cos)
    keys = []
    for i, e in enumerate(events):
        nxt_event = events[i + 1] if i + 1 < len(events) else n
        after = [s for s in stops if e < s < nxt_event]
        keys.append(after[0] if after else e)
    keys.append(n - 1)
    merged: list[int] = []
    for k in sorted(set(keys)):
        if merged and k - merged[-1] < cfg.min_gap:
            merged[-1] = k
        else:
            merged.append(k)
    return merged


def keyframes_from_state(state: np.ndarray, state_names: Sequence[str] | None = None,
                         config: KeyframeConfig | None = None) -> list[int]:
    """Keyframes from an ``observation.state`` array whose columns are named ``ee_x, ee_y, ee_z,
    gripper`` (sim_envs' layout). Unnamed columns are refused rather than guessed: for other layouts
    (joints, other names, no gripper) use :mod:`finetune_embodied.labelling`, which maps columns by
    the dataset's names with a config override."""
    state = np.asarray(state, dtype=np.float64)
    if state.ndim != 2:
        raise ValueError(f"state must be (T, S), got {state.shape}")
    if not state_names:
        raise ValueError("state columns have no names: pass state_names with ee_x/ee_y/ee_z/gripper "
                         "(or label with finetune_embodied.labelling and label.gripper / label.position)")
    names = list(state_names)
    if len(names) != state.shape[1]:
        raise ValueError(f"{len(names)} state names for {state.shape[1]} state columns")
    try:
        xyz = [names.index(k) for k in ("ee_x", "ee_y", "ee_z")]
        g = names.index("gripper")
    except ValueError:
        raise ValueError(f"state names {names} lack ee_x/ee_y/ee_z/gripper") from None
    return detect_keyframes(state[:, g], state[:, xyz], config)


@dataclass
class KeyframeScore:
    true_positives: int
    detected: int
    actual: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.detected if self.detected else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.actual if self.actual else 0.0


def match_keyframes(detected: Sequence[int], actual: Sequence[int], tolerance: int) -> KeyframeScore:
    """Greedy one-to-one matching: a detection counts when within ``tolerance`` frames of an unmatched
    true boundary (each true boundary matches at most once)."""
    free = sorted(int(a) for a in actual)
    tp = 0
    for d in sorted(int(x) for x in detected):
        best = min(free, key=lambda a: abs(a - d), default=None)
        if best is not None and abs(best - d) <= tolerance:
            free.remove(best)
            tp += 1
    return KeyframeScore(tp, len(detected), len(actual))
