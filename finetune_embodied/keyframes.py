"""Keyframes for datasets without subtask labels: the frame where each subtask ends.

Cues from proprioception alone (no images, no labels), each a physical reading of what a step is:

- **grasps and releases** end manipulation subtasks, and only the ones made *at rest*: a robot
  closes or opens its hand when the arm has arrived; a hand that closes while the arm travels (a
  button-pressing expert closing its fingers on the way) holds nothing, and is not an event.
- **the retreat**: after a grasp or release the arm moves away, and the subtask ends where that
  departure ends: the first stop, or the first turn away from the direction it left in (with an
  up axis the departure is a lift, and it ends where the arm turns more than acos(turn_cos) off
  the vertical: a lift that curves into a carry ends where it stops rising steeply). When the arm does not lift
  away (an object let go in the air, then grasped again; a missed grasp), the change itself ends it.
- **picked up, or only moved**: a grasp ends a subtask of its own ("pick up the cup") when the arm
  lifts what it holds to about the height it travels at with an empty hand (``lift_frac`` of the
  way from the grasp point up to that height, the median height of its open-hand motion in the
  episode). What is held lower (dragged, folded over, slid) is one subtask from grasp to release.
  This needs the vertical axis (``up_axis`` of the position; ``None`` for joint signals).

The last frame always ends the last subtask. ``match_keyframes`` scores detections against true
boundaries (precision/recall within a tolerance); ``tests/finetune_embodied/test_keyframes.py`` and
``bench/label_keyframes.py`` do so on recorded episodes whose step ends are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KeyframeConfig", "departure_end", "detect_keyframes", "gripper_changes", "keyframes_from_state", "match_keyframes", "motion_ends", "motion_pauses"]


@dataclass
class KeyframeConfig:
    gripper_threshold: float = 0.5  # gripper value above this = closed
    events: tuple[str, ...] = ("close", "open")  # which gripper changes end a subtask
    rest_frac: float = 0.05  # speed below this fraction of the episode's max speed = at rest
    turn_cos: float = 0.9  # the motion ends where its direction turns by more than acos(turn_cos)
    min_gap: int = 2  # keyframes closer than this (frames) are merged, keeping the later one
    still_frac: float = 0.25  # arm speed at most this fraction of its top = still (a gripper change counts); above = moving away
    lift_frac: float = 0.75  # a grasp is a pick when the held thing rises this fraction of the way to open-hand travel height
    up_axis: int | None = 2  # column of ee_pos that points up (None: no height cues, e.g. joint signals)

    def __post_init__(self) -> None:
        bad = set(self.events) - {"close", "open"}
        if bad or not self.events:
            raise ValueError(f"KeyframeConfig.events must be a non-empty subset of ('close', 'open'), got {self.events}")
        if not 0 <= self.rest_frac < 1 or not -1 <= self.turn_cos <= 1:
            raise ValueError(f"need 0 <= rest_frac < 1 and -1 <= turn_cos <= 1, got {self.rest_frac}, {self.turn_cos}")
        if self.min_gap < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        if not 0 < self.still_frac < 1 or not 0 <= self.lift_frac <= 1:
            raise ValueError(f"need 0 < still_frac < 1 and 0 <= lift_frac <= 1, got {self.still_frac}, {self.lift_frac}")


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


def gripper_changes(closed: np.ndarray, speed: np.ndarray, still_frac: float) -> list[tuple[int, str]]:
    """(frame, "close" | "open") where the gripper changes with the arm still: its slowest speed in the
    frames around the change at most ``still_frac`` of the episode's top speed."""
    top = float(speed.max()) if len(speed) else 0.0
    out = []
    for t in range(1, len(closed)):
        if closed[t] == closed[t - 1]:
            continue
        if top > 0 and speed[max(1, t - 1) : t + 2].min() > still_frac * top:
            continue  # the hand closed or opened while the arm travelled: it holds nothing
        out.append((t, "close" if closed[t] else "open"))
    return out


def departure_end(vel: np.ndarray, speed: np.ndarray, event: int, until: int, cfg: KeyframeConfig,
                  up: int | None) -> int:
    """Where the arm's departure from ``event`` ends (at the latest at frame ``until``): the frame
    before it stops or turns away from the direction it left in; ``event`` itself when it never
    leaves or, with an up axis, does not leave upwards (no retreat: a release in the air, a regrasp)."""
    top = float(speed.max())
    leaving = [t for t in range(event + 1, until) if speed[t] > cfg.still_frac * top]
    if not leaving:
        return event
    d = leaving[0]
    u = vel[d] / speed[d]  # the direction it left in
    if up is not None:
        if u[up] < 0.5:
            return event  # no lift away (it heads down or sideways): the gripper change ends the step
        u = np.eye(len(u))[up]  # a lift: it ends where the arm stops rising steeply
    rest = cfg.rest_frac * top
    for t in range(d, min(until, len(speed) - 1)):
        if speed[t + 1] <= rest or float(vel[t + 1] @ u) / speed[t + 1] < cfg.turn_cos:
            return t
    return event


def detect_keyframes(gripper: np.ndarray, ee_pos: np.ndarray, config: KeyframeConfig | None = None) -> list[int]:
    """Subtask-end frames of one episode from its gripper signal (T,) and the arm's motion (T, D):
    end-effector positions (D = 3, column ``config.up_axis`` up) or any signal that moves with the
    arm (scaled joint angles; set ``up_axis=None``)."""
    cfg = config or KeyframeConfig()
    gripper = np.asarray(gripper, dtype=np.float64).reshape(-1)
    pos = np.asarray(ee_pos, dtype=np.float64)
    n = len(gripper)
    if n == 0:
        raise ValueError("detect_keyframes: empty episode")
    if pos.ndim != 2 or len(pos) != n or pos.shape[1] < 1:
        raise ValueError(f"ee_pos must be ({n}, D) to match the gripper signal, got {pos.shape}")
    up = cfg.up_axis if cfg.up_axis is not None and cfg.up_axis < pos.shape[1] else None
    closed = gripper > cfg.gripper_threshold
    vel = np.zeros_like(pos)
    vel[1:] = np.diff(pos, axis=0)  # (T, D) motion into each frame
    speed = np.linalg.norm(vel, axis=1)
    changes = gripper_changes(closed, speed, cfg.still_frac)
    # The height the arm travels at with an empty hand: the median height of its open-hand motion.
    travel = None
    if up is not None:
        free = ~closed & (speed > cfg.rest_frac * max(float(speed.max()), 1e-12))
        if free.sum() >= 3:
            travel = float(np.median(pos[free, up]))
    keys = []
    for i, (e, kind) in enumerate(changes):
        if kind not in cfg.events:
            continue
        nxt = changes[i + 1][0] if i + 1 < len(changes) else n
        if kind == "close" and travel is not None:
            released = next((t for t, k in changes[i + 1 :] if k == "open"), n)
            z0, peak = pos[e, up], float(pos[e:released, up].max())
            if travel > z0 and peak < z0 + cfg.lift_frac * (travel - z0):
                continue  # held low (dragged, folded, slid): one subtask from the grasp to the release
        keys.append(departure_end(vel, speed, e, nxt, cfg, up))
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
