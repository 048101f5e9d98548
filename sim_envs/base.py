"""TabletopEnv: the common base of every sim_envs task (see docs/sim_envs.md).

Low-level dynamics are kinematic: the action moves the end effector by up to ``MAX_STEP`` metres
per axis and sets the gripper; closing the gripper near something grasps it, opening releases it
(the subclass decides what that means: a rigid object lands, a cloth is folded). High-level
skills (``execute_skill``) are scripted controllers that emit exactly those low-level actions
through :meth:`TabletopEnv.step`, so every skill leaves a full frame stream behind.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from emu_guide.types import ActionGoal, CameraModel, PlanStep, StepResult
from sim_envs.camera import make_camera
from sim_envs.render import TABLE_STYLES, GripperSprite, Painter, sample_lighting, table_background


class SkillError(ValueError):
    """A skill was asked with an invalid verb, object or target; the message lists the valid ones."""


@dataclass
class Waypoint:
    """A scripted-controller target: move the end effector to ``pos`` with the gripper ``closed``."""

    pos: np.ndarray  # (3,) metres, table frame
    closed: bool
    label: str = ""  # what this waypoint is for ("approach", "grasp", ...), for debugging


def normalize_name(name: str | None) -> str:
    """Names compare case-insensitively, without a leading article or surrounding spaces."""
    if name is None:
        return ""
    s = " ".join(str(name).lower().split())
    for article in ("the ", "a ", "an "):
        if s.startswith(article):
            s = s[len(article) :]
    return _ALIASES.get(s, s)


_ALIASES = {"center": "centre"}  # spellings accepted for the same name


class TabletopEnv(gym.Env):
    """A multi-step manipulation task on a tabletop seen by a fixed RGB camera.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``: end-effector displacement (dx, dy, dz) in units of
    ``MAX_STEP`` metres, and the gripper command (> 0 closes, <= 0 opens).

    ## Observation Space
    ``Dict(image=Box(0, 255, (R, R, 3), uint8), state=Box((5,), float32))``: the camera image
    and the proprioceptive state (ee x, y, z in metres, gripper closed 0/1, holding 0/1).

    ## Rewards
    +1 each time the next ground-truth step becomes satisfied (so the return is ``steps_done()``).

    ## Episode End
    Terminated when ``task_success()``; truncated by the registered ``max_episode_steps``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    task_name = ""
    verbs: tuple[str, ...] = ()
    MAX_STEP = 0.03  # metres per axis per step at |action| = 1
    WORKSPACE_LOW = np.array([-0.34, -0.48, 0.0])
    WORKSPACE_HIGH = np.array([0.36, 0.48, 0.30])
    HOME = np.array([-0.3, -0.28, 0.2])
    TRAVEL_Z = 0.16  # height of transport moves
    MAX_WAYPOINT_STEPS = 200  # a waypoint not reached after this many steps fails the skill

    def __init__(self, resolution: int = 96, render_mode: str | None = "rgb_array", camera_jitter: bool = True) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
            raise ValueError(f"resolution must be an int (pixels), got {resolution!r}")
        if not 32 <= int(resolution) <= 1024:
            raise ValueError(f"resolution must be in [32, 1024] pixels, got {resolution}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.resolution = int(resolution)
        self.render_mode = render_mode
        self.camera_jitter = bool(camera_jitter)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        low = np.array([*self.WORKSPACE_LOW, 0.0, 0.0], dtype=np.float32)
        high = np.array([*self.WORKSPACE_HIGH, 1.0, 1.0], dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, shape=(self.resolution, self.resolution, 3), dtype=np.uint8),
                "state": spaces.Box(low, high, dtype=np.float32),
            }
        )
        self.camera: CameraModel = make_camera(self.resolution)
        self.instruction = ""
        self._painter = Painter(self.camera)
        self._plan: list[PlanStep] = []
        self._reset_done = False

    # ------------------------------------------------------------------ subclass hooks
    def _sample_task(self, rng: np.random.Generator) -> None:
        """Sample the scene (objects, instruction) from ``rng``; set ``self.instruction``."""
        raise NotImplementedError

    def _build_plan(self) -> list[PlanStep]:
        """The ground-truth plan from the reset state."""
        raise NotImplementedError

    def _state_fields(self) -> tuple[str, ...]:
        """Names of the attributes that make up the mutable task state (for save/restore)."""
        raise NotImplementedError

    def _on_close(self) -> None:
        """The gripper just closed at ``self.ee``: grasp something if it is there."""

    def _on_open(self) -> None:
        """The gripper just opened: release what it held."""

    def _after_motion(self) -> None:
        """The end effector moved: move what it holds."""

    def is_holding(self) -> bool:
        raise NotImplementedError

    def _draw_scene_static(self, img: np.ndarray) -> None:
        """Draw everything at rest onto ``img`` (background already there)."""

    def _draw_background_extras(self, img: np.ndarray) -> None:
        """Draw what never moves (receptacles, bins) onto the background."""

    def _draw_held(self, img: np.ndarray) -> None:
        """Draw what the gripper holds (per frame)."""

    def _validate(self, verb: str, obj: str, target: str) -> None:
        """Raise SkillError for an unknown object or target of ``verb`` (verb already checked)."""
        raise NotImplementedError

    def _check(self, verb: str, obj: str, target: str) -> bool:
        raise NotImplementedError

    def _waypoints(self, verb: str, obj: str, target: str) -> list[Waypoint] | str:
        """Controller waypoints for a validated goal, or a string saying why it cannot run now."""
        raise NotImplementedError

    def _final_ok(self) -> bool:
        """Whether the final state is right (task_success also needs every step done)."""
        return True

    def object_names(self) -> list[str]:
        raise NotImplementedError

    def target_names(self) -> list[str]:
        raise NotImplementedError

    def name_vocabulary(self) -> list[str]:
        """Every object name this task can produce in any episode (a detector's class list).

        Grounded decoding needs it: a name the model may say but that is absent now must be known
        to be banned. This episode's ``object_names()`` are among them.
        """
        return self.object_names()

    def _privileged_extra(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        self.camera = make_camera(self.resolution, rng, self.camera_jitter)
        self._painter = Painter(self.camera)
        self._gripper = GripperSprite(self._painter, self.resolution)
        self.table_style = str(TABLE_STYLES[int(rng.integers(len(TABLE_STYLES)))])
        self.lighting = sample_lighting(rng)
        self._prims_cache: dict[str, Any] = {}  # recorded drawing primitives (colours depend on the light)
        self._held_prims = None
        self.ee = self.HOME.copy()
        self.closed = False
        self._sample_task(rng)
        self._background = table_background(self.camera, rng, self.table_style, self.lighting)
        self._draw_background_extras(self._background)
        self._plan = self._build_plan()
        self._progress = 0
        self._update_progress()
        self._subgoal_cache: list[np.ndarray] | None = None
        self._static: np.ndarray | None = None
        self._frame: np.ndarray | None = None
        self._reset_snapshot = self._save_state()
        self._reset_done = True
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self._require_reset()
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (4,):
            raise ValueError(f"action must have shape (4,) = (dx, dy, dz, gripper), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        self.ee = np.clip(self.ee + a[:3] * self.MAX_STEP, self.WORKSPACE_LOW, self.WORKSPACE_HIGH)
        want_closed = bool(a[3] > 0.0)
        self._after_motion()
        if want_closed and not self.closed:
            self.closed = True
            self._on_close()
        elif not want_closed and self.closed:
            self.closed = False
            self._on_open()
        self._frame = None
        before = self._progress
        self._update_progress()
        return self._obs(), float(self._progress - before), self.task_success(), False, self._info()

    def render(self) -> np.ndarray:
        """The current camera image (HxWx3 uint8 RGB)."""
        self._require_reset()
        if self._frame is None:
            if self._static is None:
                self._static = self._background.copy()
                self._draw_scene_static(self._static)
            img = self._static.copy()
            self._draw_held(img)
            self._gripper.draw(img, self.ee, self.closed)
            self._frame = img
        return self._frame.copy()

    # ------------------------------------------------------------------ contract API
    def ground_truth_plan(self) -> list[PlanStep]:
        """Sentences and ActionGoals of the whole episode, from the reset state."""
        self._require_reset()
        return [copy.deepcopy(s) for s in self._plan]

    def subgoal_images(self) -> list[np.ndarray]:
        """The camera image after each ground-truth step (simulated from the reset state)."""
        self._require_reset()
        if self._subgoal_cache is None:
            saved = self._save_state()
            self._restore_state(self._reset_snapshot)
            images = []
            for step in self._plan:
                self.execute_skill(step.goal)
                images.append(self.render())
            self._restore_state(saved)
            self._subgoal_cache = images
        return [im.copy() for im in self._subgoal_cache]

    def execute_skill(self, goal: ActionGoal) -> StepResult:
        """Run the scripted controller for ``goal`` through low-level steps; frames = every step's image."""
        self._require_reset()
        verb, obj, target = self._parse_goal(goal)
        t0 = time.perf_counter()
        plan = self._waypoints(verb, obj, target)
        if isinstance(plan, str):
            return StepResult(step_index=goal.step_index, success=False, reason=plan, duration_s=time.perf_counter() - t0)
        frames: list[np.ndarray] = []
        for wp in plan:
            if not self._follow(wp, frames):
                return StepResult(
                    step_index=goal.step_index,
                    success=False,
                    reason=f"waypoint {wp.label!r} at {np.round(wp.pos, 3).tolist()} not reachable",
                    frames=frames,
                    duration_s=time.perf_counter() - t0,
                )
        ok = self._check(verb, obj, target)
        reason = "" if ok else f"{verb} {obj!r} finished but its check failed"
        return StepResult(step_index=goal.step_index, success=ok, reason=reason, frames=frames, duration_s=time.perf_counter() - t0)

    def skill_waypoints(self, goal: ActionGoal) -> list[Waypoint]:
        """The controller's waypoints for ``goal`` from the current state (used by the expert).

        Raises SkillError for an invalid goal and RuntimeError when it cannot run now
        (e.g. placing something that is not held).
        """
        self._require_reset()
        plan = self._waypoints(*self._parse_goal(goal))
        if isinstance(plan, str):
            raise RuntimeError(plan)
        return plan

    def waypoint_action(self, wp: Waypoint) -> np.ndarray:
        """The low-level action that moves toward ``wp`` (reaches it exactly when close)."""
        a = np.empty(4, dtype=np.float32)
        a[:3] = np.clip((wp.pos - self.ee) / self.MAX_STEP, -1.0, 1.0)
        a[3] = 1.0 if wp.closed else -1.0
        return a

    def at_waypoint(self, wp: Waypoint) -> bool:
        return bool(np.max(np.abs(wp.pos - self.ee)) < 1e-5 and self.closed == wp.closed)

    def check_step(self, goal: ActionGoal) -> bool:
        """Whether the current state satisfies ``goal``."""
        self._require_reset()
        return self._check(*self._parse_goal(goal))

    def steps_done(self) -> int:
        """How many ground-truth steps have been satisfied, in order (latched as they complete)."""
        self._require_reset()
        return self._progress

    def task_success(self) -> bool:
        self._require_reset()
        return self._progress == len(self._plan) and self._final_ok()

    def privileged_state(self) -> dict[str, Any]:
        """End effector, gripper and task-specific object state (oracle backend, evaluation)."""
        self._require_reset()
        state = {
            "task_name": self.task_name,
            "instruction": self.instruction,
            "ee": [float(v) for v in self.ee],
            "gripper_closed": bool(self.closed),
            "holding": bool(self.is_holding()),
            "steps_done": self._progress,
            "num_steps": len(self._plan),
        }
        state.update(self._privileged_extra())
        return state

    def pixel_of(self, point: np.ndarray) -> tuple[float, float]:
        """Pixel (u, v) of a world point."""
        u, v = self._painter.project(np.asarray(point, dtype=np.float64).reshape(1, 3))[0]
        return float(u), float(v)

    # ------------------------------------------------------------------ internals
    def _require_reset(self) -> None:
        if not self._reset_done:
            raise RuntimeError(f"{type(self).__name__}: call reset() before using the environment")

    def _parse_goal(self, goal: ActionGoal) -> tuple[str, str, str]:
        if not isinstance(goal, ActionGoal):
            raise SkillError(f"expected an emu_guide.types.ActionGoal, got {type(goal).__name__}")
        if goal.verb not in self.verbs:
            raise SkillError(f"verb {goal.verb!r} is not supported by {self.task_name}; valid verbs: {', '.join(self.verbs)}")
        verb, obj, target = goal.verb, normalize_name(goal.object), normalize_name(goal.target)
        names = self.object_names()
        if obj not in names:
            raise SkillError(f"unknown object {goal.object!r} for {verb!r}; valid objects: {', '.join(names)}")
        self._validate(verb, obj, target)
        return verb, obj, target

    def _follow(self, wp: Waypoint, frames: list[np.ndarray]) -> bool:
        for _ in range(self.MAX_WAYPOINT_STEPS):
            if self.at_waypoint(wp):
                return True
            obs, *_ = self.step(self.waypoint_action(wp))
            frames.append(obs["image"])
        return self.at_waypoint(wp)

    def _update_progress(self) -> None:
        while self._progress < len(self._plan):
            g = self._plan[self._progress].goal
            if not self._check(g.verb, normalize_name(g.object), normalize_name(g.target)):
                break
            self._progress += 1

    def _save_state(self) -> dict[str, Any]:
        names = ("ee", "closed", "_progress", *self._state_fields())
        return copy.deepcopy({n: getattr(self, n) for n in names})

    def _restore_state(self, state: dict[str, Any]) -> None:
        for name, value in copy.deepcopy(state).items():
            setattr(self, name, value)
        self._held_prims = None
        self._static = None
        self._frame = None

    def _invalidate_static(self) -> None:
        self._static = None

    def _obs(self) -> dict[str, np.ndarray]:
        state = np.array([*self.ee, float(self.closed), float(self.is_holding())], dtype=np.float32)
        return {"image": self.render(), "state": state}

    def _info(self) -> dict[str, Any]:
        return {"steps_done": self._progress, "num_steps": len(self._plan), "is_success": self.task_success()}
