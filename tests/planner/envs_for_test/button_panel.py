"""An environment written the way an outside user would write one (docs/environments.md): a plain
Gymnasium env that knows nothing of this project, plus a wrapper adapter that implements the
guidance protocol. It holds a lock (so it cannot be deep-copied, like a MuJoCo env) and has verbs
of its own ("press", "pull") that the planner learns from ``skill_verbs()``.

Task: press the buttons in the instruction's order, then pull the lever.
"""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np

from emu_guide.types import ActionGoal, PlanStep, StepResult

COLOURS = {"red button": (220, 40, 40), "green button": (40, 200, 60), "blue button": (40, 80, 220)}
LEVER = (200, 200, 40)


class ButtonPanelEnv(gym.Env):
    """Three buttons and a lever on a panel; a 4-dim action presses/pulls by index (unused here)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, size: int = 48) -> None:
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(4)
        self._lock = threading.Lock()  # not deep-copyable, as simulator handles are not
        self.pressed: list[str] = []
        self.lever = False
        self.order: list[str] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.order = [str(n) for n in self.np_random.permutation(list(COLOURS))]
        self.pressed, self.lever = [], False
        return self.render(), {}

    def step(self, action):
        return self.render(), 0.0, False, False, {}

    def render(self) -> np.ndarray:
        img = np.full((self.size, self.size, 3), 90, np.uint8)
        for i, (name, rgb) in enumerate(COLOURS.items()):
            x = 6 + i * 14
            img[10:20, x : x + 10] = (255, 255, 255) if name in self.pressed else rgb
        img[32:42, 18:30] = (255, 255, 255) if self.lever else LEVER
        return img


class GuidedButtonPanel(gym.Wrapper):
    """The adapter: the guidance protocol on top of the plain env (found through the wrapper chain)."""

    task_name = "button_panel"

    def __init__(self, env: ButtonPanelEnv) -> None:
        super().__init__(env)

    @property
    def instruction(self) -> str:
        names = ", then the ".join(self.env.unwrapped.order)
        return f"press the {names}, then pull the lever"

    def render(self) -> np.ndarray:
        return self.env.unwrapped.render()

    def object_names(self) -> list[str]:
        return [*COLOURS, "lever"]

    def target_names(self) -> list[str]:
        return []

    def skill_verbs(self) -> dict[str, str]:
        return {"press": "press", "push down": "press", "pull": "pull"}

    def execute_skill(self, goal: ActionGoal) -> StepResult:
        panel = self.env.unwrapped
        if goal.verb == "press" and goal.object in COLOURS and goal.object not in panel.pressed:
            panel.pressed.append(goal.object)
            return StepResult(goal.step_index, True)
        if goal.verb == "pull" and goal.object == "lever":
            panel.lever = True
            return StepResult(goal.step_index, True)
        return StepResult(goal.step_index, False, reason=f"cannot {goal.verb} {goal.object!r}")

    def check_step(self, goal: ActionGoal) -> bool:
        panel = self.env.unwrapped
        return goal.object in panel.pressed if goal.verb == "press" else panel.lever and goal.object == "lever"

    def _satisfied(self) -> int:
        panel = self.env.unwrapped
        n = 0
        for name in panel.order:
            if n < len(panel.pressed) and panel.pressed[n] == name:
                n += 1
        return n + (1 if panel.lever and n == len(panel.order) else 0)

    def task_success(self) -> bool:
        return self._satisfied() == len(COLOURS) + 1

    # the optional ground-truth members: step metrics and the oracle backend
    def steps_done(self) -> int:
        return self._satisfied()

    def ground_truth_plan(self) -> list[PlanStep]:
        steps = [PlanStep(i, f"press the {n}", goal=ActionGoal("press", n, step_index=i))
                 for i, n in enumerate(self.env.unwrapped.order)]
        return [*steps, PlanStep(len(steps), "pull the lever", goal=ActionGoal("pull", "lever", step_index=len(steps)))]

    def subgoal_images(self) -> list[np.ndarray]:
        return [self.render() for _ in self.ground_truth_plan()]  # (no look-ahead rendering in this toy)

    @property
    def camera(self):
        from emu_guide.types import CameraModel

        s = self.env.unwrapped.size
        looking_down = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]])  # 1 m above the panel
        return CameraModel(fx=50.0, fy=50.0, cx=s / 2, cy=s / 2, width=s, height=s, world_from_camera=looking_down)


def make(resolution: int | None = None) -> gym.Env:
    """What `emu-guide bench --tasks tests.planner.envs_for_test.button_panel:make` builds."""
    return GuidedButtonPanel(ButtonPanelEnv(size=resolution or 48))
