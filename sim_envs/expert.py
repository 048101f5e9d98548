"""Scripted expert: the low-level action stream of a competent demonstrator, with step labels.

``ScriptedExpert(env).next_action()`` returns ``(action, step_index, step_text)``:

- ``action``: float32 (4,), the low-level action to pass to ``env.step``;
- ``step_index``: the ground-truth plan step this action belongs to, or ``-1`` for an off-plan
  segment (a deliberate mistake or the recovery from it, see ``mistake_rate``);
- ``step_text``: a sentence that truthfully says what the arm is doing: the plan sentence for
  plan segments, otherwise e.g. "pick up the blue plate" (the wrong object) and then
  "put the blue plate back".

``expert.segment`` tells the current segment's kind ("plan", "mistake", "recovery"). Loop with
``while not expert.done: env.step(expert.next_action()[0])`` or call ``expert.run()``.

With ``mistake_rate > 0`` each plan step is preceded, with that probability, by an off-nominal
situation and its recovery: TableClear/SortBlocks picks the wrong item and puts it back (pick
steps) or drops the item on the way and re-grasps it (place steps); FoldCloth misses the grasp
next to the part and tries again. A plan segment whose check fails at its end is retried (up to
``MAX_RETRIES`` times), so the expert also recovers from situations it did not cause.

``solve(env)`` instead runs the ground-truth plan through the skill interface (``execute_skill``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from emu_guide.types import ActionGoal
from sim_envs.base import TabletopEnv, Waypoint
from sim_envs.rigid import RigidTabletopEnv

MAX_RETRIES = 3


class ExpertError(RuntimeError):
    """The expert could not continue (a step kept failing)."""


@dataclass
class Segment:
    """A labelled stretch of low-level actions."""

    step_index: int  # plan step, or -1 off-plan
    text: str
    kind: str  # "plan" | "mistake" | "recovery"
    make: Callable[[], list[Waypoint]]  # waypoints, computed when the segment starts
    goal: ActionGoal | None = None  # checked when a plan segment ends (retried if not satisfied)


class ScriptedExpert:
    """Produces the low-level actions that solve ``env``'s current episode (see module doc)."""

    def __init__(self, env: gym.Env, mistake_rate: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= float(mistake_rate) <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {mistake_rate!r}")
        unwrapped = env.unwrapped
        if not isinstance(unwrapped, TabletopEnv):
            raise ValueError(f"ScriptedExpert needs a sim_envs.TabletopEnv, got {type(unwrapped).__name__}")
        self._env = env  # what run() steps (keeps wrappers such as TimeLimit in the loop)
        self.env: TabletopEnv = unwrapped
        self.mistake_rate = float(mistake_rate)
        self.rng = np.random.default_rng(seed)
        self.plan = self.env.ground_truth_plan()
        self._next_step = 0
        self._queue: deque[Segment] = deque()
        self.segment: Segment | None = None
        self._waypoints: list[Waypoint] = []
        self._retries = 0
        self.mistakes = 0  # how many off-nominal situations were injected

    # ------------------------------------------------------------------ public API
    @property
    def done(self) -> bool:
        """True when every plan step has been executed (nothing left to do)."""
        return not self._advance()

    def next_action(self) -> tuple[np.ndarray, int, str]:
        """The next low-level action with its (step_index, step_text) label."""
        if not self._advance():
            raise RuntimeError("the expert is done: check `expert.done` before asking for an action")
        assert self.segment is not None
        return self.env.waypoint_action(self._waypoints[0]), self.segment.step_index, self.segment.text

    def run(self, max_steps: int = 5000) -> bool:
        """Step the env until the expert is done, the episode ends or ``max_steps``; return task_success."""
        for _ in range(max_steps):
            if self.done:
                break
            action, _, _ = self.next_action()
            _, _, terminated, truncated, _ = self._env.step(action)
            if terminated or truncated:
                break
        return self.env.task_success()

    # ------------------------------------------------------------------ internals
    def _advance(self) -> bool:
        """Drop reached waypoints / finished segments; False when nothing is left."""
        while True:
            while self._waypoints and self.env.at_waypoint(self._waypoints[0]):
                self._waypoints.pop(0)
            if self._waypoints:
                return True
            if self.segment is not None:
                self._finish_segment(self.segment)
                self.segment = None
            if not self._queue:
                if self._next_step >= len(self.plan):
                    return False
                self._enqueue_step(self._next_step)
                self._next_step += 1
            self.segment = self._queue.popleft()
            self._waypoints = list(self.segment.make())

    def _finish_segment(self, seg: Segment) -> None:
        if seg.goal is None or self.env.check_step(seg.goal):
            self._retries = 0
            return
        self._retries += 1
        if self._retries > MAX_RETRIES:
            raise ExpertError(f"step {seg.step_index} {seg.text!r} still fails after {MAX_RETRIES} retries")
        self._queue.appendleft(seg)

    def _plan_segment(self, k: int) -> Segment:
        step = self.plan[k]
        goal = step.goal
        assert goal is not None
        return Segment(k, step.text, "plan", lambda: self.env.skill_waypoints(goal), goal)

    def _enqueue_step(self, k: int) -> None:
        segs: list[Segment] = []
        if self.mistake_rate > 0 and self.rng.random() < self.mistake_rate:
            segs = self._mistake(k)
            self.mistakes += bool(segs)
        self._queue.extend(segs or [self._plan_segment(k)])

    def _mistake(self, k: int) -> list[Segment]:
        goal = self.plan[k].goal
        assert goal is not None
        env = self.env
        if isinstance(env, RigidTabletopEnv):
            if goal.verb == "pick":
                return self._wrong_pick(env, k, goal)
            return self._drop(env, k, goal)
        if hasattr(env, "miss_waypoints"):
            wps = env.miss_waypoints(goal.object)
            if wps:
                return [
                    Segment(-1, f"reach for the {goal.object} and miss it", "mistake", lambda: wps),
                    self._plan_segment(k),
                ]
        return []

    def _wrong_pick(self, env: RigidTabletopEnv, k: int, goal: ActionGoal) -> list[Segment]:
        """Pick up an item the plan does not ask for now, then put it back where it was."""
        done_objects = {s.goal.object for s in self.plan[:k] if s.goal is not None}
        candidates = [
            it
            for i, it in enumerate(env.items)
            if it.name != goal.object and it.name not in done_objects and it.location == "table" and not env._has_item_on_top(i)
        ]
        if not candidates or env.is_holding():
            return []
        wrong = candidates[int(self.rng.integers(len(candidates)))]
        x, y, z = (float(v) for v in wrong.pos)
        return [
            Segment(-1, f"pick up the {wrong.name}", "mistake", lambda: env.pick_waypoints(wrong)),
            Segment(-1, f"put the {wrong.name} back", "recovery", lambda: env.place_waypoints(x, y, z)),
            self._plan_segment(k),
        ]

    def _drop(self, env: RigidTabletopEnv, k: int, goal: ActionGoal) -> list[Segment]:
        """On the way to the target, the gripper opens over free table; then re-grasp and carry on."""
        if env.held_name() != goal.object:
            return []
        it = env.item(goal.object)
        try:
            final = env.skill_waypoints(goal)[0].pos  # above the target
        except RuntimeError:
            return []
        for frac in (0.5, 0.35, 0.65, 0.2):
            drop = env.ee + frac * (final - env.ee)
            if env.free_table_spot(float(drop[0]), float(drop[1]), it):
                break
        else:
            return []
        dx, dy = float(drop[0]), float(drop[1])
        text = self.plan[k].text
        return [
            Segment(k, text, "plan", lambda: [
                Waypoint(np.array([dx, dy, env.TRAVEL_Z]), True, "carry"),
                Waypoint(np.array([dx, dy, env.TRAVEL_Z]), False, "slip"),
            ]),
            Segment(-1, f"pick up the {it.name} again", "recovery", lambda: env.pick_waypoints(it)),
            self._plan_segment(k),
        ]


def solve(env: gym.Env) -> bool:
    """Run the ground-truth plan through ``execute_skill`` (one retry per step); return task_success."""
    u = env.unwrapped
    if not isinstance(u, TabletopEnv):
        raise ValueError(f"solve needs a sim_envs.TabletopEnv, got {type(u).__name__}")
    for step in u.ground_truth_plan():
        assert step.goal is not None
        if not u.execute_skill(step.goal).success:
            u.execute_skill(step.goal)
    return u.task_success()
