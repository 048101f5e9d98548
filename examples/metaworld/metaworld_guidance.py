"""Meta-World tasks as guidance environments: a worked outside example (docs/environments.md).

A ``gymnasium.Wrapper`` around a Meta-World 3.1.1 env adds the guidance protocol
(``emu_guide/env_protocol.py``). Each plan step is one phase of the task's scripted expert
(``metaworld.policies``): ``execute_skill`` runs the expert until that phase's condition holds
(read from the observation and Meta-World's own success info), or a step budget runs out.

| task | instruction | plan (one sentence per step) |
|---|---|---|
| ``pick-place`` | put the puck at the goal | pick up the puck; place the puck at the goal |
| ``drawer-open`` | open the drawer | reach the drawer handle; pull the drawer handle |
| ``button-press-topdown`` | press the button down | press the button |

Usage (from the repository root, with the ``[mujoco]`` extra installed)::

    emu-guide bench --tasks examples.metaworld.metaworld_guidance:make_pick_place --backend oracle --episodes 20

Rendering is headless (``MUJOCO_GL=egl`` unless already set), shadows and multisampling off.
The table top is the world plane z = 0, so ``camera`` is a real pinhole model of the MuJoCo camera
in the ``table`` frame. MuJoCo envs cannot be deep-copied (this wrapper says so with a TypeError):
the oracle backend then takes subgoal images from ``subgoal_images()``, which come from the same
expert plan recorded on a second env reset with the same seed.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from emu_guide.types import ActionGoal, CameraModel, PlanStep, StepResult

__all__ = ["TASKS", "MetaWorldGuidance", "make", "make_button_press", "make_drawer_open", "make_pick_place"]

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported (it is imported lazily below)

SKILL_STEPS = 250  # env steps one skill may take (the experts need 40-100 per phase)
EPISODE_STEPS = 5000  # Meta-World's own limit is 500; guidance may retry a skill several times
GRIPPER_CLOSED = 0.73  # finger separation below which the pick-place expert treats the grip as closed

# Meta-World's 39-number observation: this frame's hand, finger gap and two objects, the same 18
# numbers of the previous frame, then the goal (what ``emu-guide record --env`` writes as the state).
_FRAME = ["hand_x", "hand_y", "hand_z", "gripper_gap", "obj_x", "obj_y", "obj_z", "obj_qw", "obj_qx", "obj_qy",
          "obj_qz", "obj2_x", "obj2_y", "obj2_z", "obj2_qw", "obj2_qx", "obj2_qy", "obj2_qz"]
STATE_NAMES = _FRAME + [f"prev_{n}" for n in _FRAME] + ["goal_x", "goal_y", "goal_z"]


@dataclass(frozen=True)
class TaskSpec:
    env_name: str  # Meta-World's name
    policy: str  # class name in metaworld.policies
    instruction: str
    objects: tuple[str, ...]
    targets: tuple[str, ...]
    plan: tuple[tuple[str, str, str | None, str], ...]  # (verb, object, target, sentence) per step
    verbs: tuple[tuple[str, str], ...]  # the task's own verb phrases: (phrase, verb)


TASKS: dict[str, TaskSpec] = {
    "pick-place": TaskSpec(
        "pick-place-v3", "SawyerPickPlaceV3Policy", "put the puck at the goal", ("puck",), ("goal",),
        (("pick", "puck", None, "pick up the puck"), ("place", "puck", "goal", "place the puck at the goal")),
        ()),
    "drawer-open": TaskSpec(
        "drawer-open-v3", "SawyerDrawerOpenV3Policy", "open the drawer", ("drawer handle",), (),
        (("reach", "drawer handle", None, "reach the drawer handle"),
         ("pull", "drawer handle", None, "pull the drawer handle")),
        (("reach", "reach"), ("reach for", "reach"), ("pull", "pull"), ("pull out", "pull"), ("pull open", "pull"))),
    "button-press-topdown": TaskSpec(
        "button-press-topdown-v3", "SawyerButtonPressTopdownV3Policy", "press the button down", ("button",), (),
        (("press", "button", None, "press the button"),),
        (("press", "press"), ("press down", "press"), ("push down", "press"))),
}


class _Sim:
    """One Meta-World env with its expert, the task's phases and a camera; no protocol here."""

    def __init__(self, task: str, resolution: int, camera: str) -> None:
        from metaworld import policies
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task_spec = TASKS[task]
        env = ALL_V3_ENVIRONMENTS[self.task_spec.env_name](render_mode="rgb_array", camera_name=camera,
                                                       width=resolution, height=resolution)
        env.model.vis.quality.offsamples = 0  # no multisampling (before the render context exists)
        env.model.vis.quality.shadowsize = 0  # no shadow map
        # Goal-observable, seeded resets (what Meta-World's own goal-observable variants set up):
        # reset positions are drawn from the env's seeded generator, and the goal is in the
        # observation (the experts read it).
        env._partially_observable = False
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        if "sawyer_observation_space" in env.__dict__:
            del env.sawyer_observation_space  # cached with the goal hidden; recomputed on next use
        env.max_path_length = EPISODE_STEPS
        self.env = env
        self.expert = getattr(policies, self.task_spec.policy)()
        self.camera_name = camera
        self.resolution = resolution
        self.obs: np.ndarray = np.zeros(39)
        self.info: dict[str, Any] = {}
        self.obj_init = np.zeros(3)
        self._upside_down: bool | None = None

    # -- state ----------------------------------------------------------------------------
    def reset(self, seed: int | None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self.env.seed(int(seed))
        obs, info = self.env.reset()
        self.obs, self.info = obs, dict(info)
        self.obj_init = np.array(obs[4:7])
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, term, trunc, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.obs, self.info = obs, dict(info)
        return obs, reward, term, trunc, info

    @property
    def hand(self) -> np.ndarray:
        return np.asarray(self.obs[:3])

    @property
    def obj(self) -> np.ndarray:
        return np.asarray(self.obs[4:7])

    def success(self) -> bool:
        return bool(self.info.get("success", 0.0))

    def render(self) -> np.ndarray:
        img = self.env.render()
        # Meta-World's corner cameras are mounted upside down: turn the image half a turn (a
        # vertical flip alone would mirror it, and no pinhole camera model fits a mirror image).
        return np.ascontiguousarray(img[::-1, ::-1] if self.upside_down else img)

    # -- phases ---------------------------------------------------------------------------
    def held(self) -> bool:
        """The puck is in the closed gripper, lifted 2 cm off its start (Meta-World's grasp test)."""
        return bool(self.obs[3] < GRIPPER_CLOSED and self.obj[2] > self.obj_init[2] + 0.02
                    and np.linalg.norm(self.hand - self.obj) < 0.08)

    def at_handle(self) -> bool:
        """The open hand is at the drawer handle, ready to pull it."""
        handle = self.obj + np.array([0.0, 0.0, -0.02])
        return bool(np.linalg.norm(self.hand[:2] - handle[:2]) < 0.06 and abs(self.hand[2] - handle[2]) < 0.04)

    def satisfied(self, verb: str) -> bool:
        if verb == "pick":
            return self.held() or self.success()
        if verb == "reach":
            return self.at_handle() or self.success()
        return self.success()  # place, pull, press: the task's own success

    def steps_done(self) -> int:
        n = 0
        for verb, *_ in self.task_spec.plan:
            if not self.satisfied(verb):
                break
            n += 1
        return n

    def run_phase(self, verb: str) -> tuple[bool, str, int]:
        """Run the expert for one phase until it is satisfied; (ok, reason, env steps)."""
        if verb == "place" and not self.held():
            return False, "the puck is not held: pick up the puck first", 0
        if verb == "pull" and not self.at_handle() and not self.success():
            return False, "the hand is not at the drawer handle: reach the drawer handle first", 0
        for n in range(SKILL_STEPS):
            if self.satisfied(verb):
                return True, "", n
            if self.env.curr_path_length >= EPISODE_STEPS - 1:
                return False, f"the episode's {EPISODE_STEPS} env steps are spent", n
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips actions
                action = np.asarray(self.expert.get_action(self.obs), dtype=np.float32)
            if verb == "pick" and self.obs[3] < GRIPPER_CLOSED and np.linalg.norm(self.hand - self.obj) < 0.07:
                action = np.array([0.0, 0.0, 0.5, 1.0], np.float32)  # grip closed on the puck: lift it
            self.step(np.clip(action, -1.0, 1.0))
        ok = self.satisfied(verb)
        return ok, "" if ok else f"{verb}: not done after {SKILL_STEPS} env steps", SKILL_STEPS

    def camera(self) -> CameraModel:
        """The MuJoCo camera as a pinhole model in the world frame (table top at z = 0)."""
        model, data = self.env.model, self.env.data
        cam_id = self._cam_id()
        # MuJoCo cameras look along -z with y up; ours (OpenCV) along +z with y down, and x, y
        # both turn over when the image was turned half a turn (see render).
        flip = np.diag([-1.0, 1.0, -1.0]) if self.upside_down else np.diag([1.0, -1.0, -1.0])
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = data.cam_xmat[cam_id].reshape(3, 3) @ flip, data.cam_xpos[cam_id]
        f = (self.resolution / 2) / math.tan(math.radians(float(model.cam_fovy[cam_id])) / 2)
        c = self.resolution / 2
        return CameraModel(width=self.resolution, height=self.resolution, fx=f, fy=f, cx=c, cy=c,
                           world_from_camera=pose, frame_id=self.camera_name)

    def _cam_id(self) -> int:
        import mujoco

        cam_id = mujoco.mj_name2id(self.env.model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera_name)
        if cam_id < 0:
            raise ValueError(f"Meta-World has no camera {self.camera_name!r}")
        mujoco.mj_forward(self.env.model, self.env.data)
        return cam_id

    @property
    def upside_down(self) -> bool:
        """The camera's image-up axis points below the horizon."""
        if self._upside_down is None:
            self._upside_down = bool(self.env.data.cam_xmat[self._cam_id()].reshape(3, 3)[2, 1] < 0)
        return self._upside_down

    def close(self) -> None:
        self.env.close()


class MetaWorldGuidance(gym.Wrapper):
    """The guidance protocol on top of a Meta-World env (found through the wrapper chain)."""

    def __init__(self, task: str = "pick-place", resolution: int = 96, camera: str = "corner") -> None:
        if task not in TASKS:
            raise ValueError(f"unknown Meta-World task {task!r}; this example has {', '.join(TASKS)}")
        self._sim = _Sim(task, int(resolution), camera)
        super().__init__(self._sim.env)
        self.observation_space = self._sim.env.sawyer_observation_space
        self.task = task
        self.task_spec = TASKS[task]
        self.task_name = f"metaworld_{task.replace('-', '_')}"
        self._seed: int | None = None
        self._seeds = np.random.default_rng()
        self._shadow: _Sim | None = None  # a second env for the recorded expert plan (subgoal images)
        self._subgoals: tuple[int | None, list[np.ndarray]] | None = None
        self._camera: CameraModel | None = None

    def __deepcopy__(self, memo: dict) -> MetaWorldGuidance:
        raise TypeError("a MuJoCo env (render context, simulator handles) cannot be deep-copied")

    # -- gymnasium ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is None:  # every episode gets a seed, so the expert plan can be replayed for subgoals
            seed = int(self._seeds.integers(2**31))
        self._seed = seed
        self._subgoals = None
        return self._sim.reset(seed)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self._sim.step(action)

    def render(self) -> np.ndarray:
        return self._sim.render()

    def close(self) -> None:
        if self._shadow is not None:
            self._shadow.close()
            self._shadow = None
        self._sim.close()

    # -- the guidance protocol ------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return self.task_spec.instruction

    @property
    def camera(self) -> CameraModel:
        if self._camera is None:
            self._camera = self._sim.camera()
        return self._camera

    def object_names(self) -> list[str]:
        return list(self.task_spec.objects)

    def target_names(self) -> list[str]:
        return list(self.task_spec.targets)

    def name_vocabulary(self) -> list[str]:
        return list(self.task_spec.objects)

    def skill_verbs(self) -> dict[str, str]:
        return dict(self.task_spec.verbs)

    def state_names(self) -> list[str]:
        """Names of the observation vector (``emu-guide record --env`` writes them; 1 = fingers open)."""
        return list(STATE_NAMES)

    def _phase_of(self, goal: ActionGoal) -> str | None:
        """The plan verb a goal names in this task, or None."""
        verb = "press" if (goal.verb == "push" and self.task == "button-press-topdown") else goal.verb
        for v, obj, target, _ in self.task_spec.plan:
            if v == verb and goal.object == obj and (goal.target or None) == target:
                return v
        return None

    def _valid_goals(self) -> str:
        return "; ".join(" ".join(x for x in (v, obj, target and f"-> {target}") if x)
                         for v, obj, target, _ in self.task_spec.plan)

    def execute_skill(self, goal: ActionGoal) -> StepResult:
        phase = self._phase_of(goal)
        if phase is None:
            return StepResult(goal.step_index, False,
                              reason=f"{self.task} cannot {goal.verb} {goal.object!r}"
                                     f"{f' to {goal.target!r}' if goal.target else ''}; "
                                     f"its skills: {self._valid_goals()}")
        ok, reason, _ = self._sim.run_phase(phase)
        return StepResult(goal.step_index, ok, reason=reason)

    def check_step(self, goal: ActionGoal) -> bool:
        phase = self._phase_of(goal)
        return phase is not None and self._sim.satisfied(phase)

    def task_success(self) -> bool:
        return self._sim.success()

    def steps_done(self) -> int:
        return self._sim.steps_done()

    def ground_truth_plan(self) -> list[PlanStep]:
        return [PlanStep(i, text, goal=ActionGoal(verb, obj, target=target, step_index=i))
                for i, (verb, obj, target, text) in enumerate(self.task_spec.plan)]

    def subgoal_images(self) -> list[np.ndarray]:
        """The camera image after each ground-truth step of the expert, on a second env reset with
        this episode's seed (a MuJoCo env cannot be copied to look ahead)."""
        if self._subgoals is None or self._subgoals[0] != self._seed:
            if self._shadow is None:
                self._shadow = _Sim(self.task, self._sim.resolution, self._sim.camera_name)
            self._shadow.reset(self._seed)
            images = []
            for verb, *_ in self.task_spec.plan:
                self._shadow.run_phase(verb)
                images.append(self._shadow.render())
            self._subgoals = (self._seed, images)
        return [img.copy() for img in self._subgoals[1]]


def make(task: str = "pick-place", resolution: int | None = None, camera: str = "corner") -> MetaWorldGuidance:
    """A guided Meta-World task (``resolution`` x ``resolution`` frames, 96 by default)."""
    return MetaWorldGuidance(task, resolution or 96, camera)


def make_pick_place(resolution: int | None = None) -> MetaWorldGuidance:
    """``emu-guide bench --tasks examples.metaworld.metaworld_guidance:make_pick_place``"""
    return make("pick-place", resolution)


def make_drawer_open(resolution: int | None = None) -> MetaWorldGuidance:
    """``emu-guide bench --tasks examples.metaworld.metaworld_guidance:make_drawer_open``"""
    return make("drawer-open", resolution)


def make_button_press(resolution: int | None = None) -> MetaWorldGuidance:
    """``emu-guide bench --tasks examples.metaworld.metaworld_guidance:make_button_press``"""
    return make("button-press-topdown", resolution)
