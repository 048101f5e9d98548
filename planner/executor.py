"""Executors: what runs an ActionGoal for the one step loop (``planner.loop``).

Here: the sim skill controller (``SimExecutor``) and planning ahead from one view
(``PlanAheadExecutor``); the ROS layer adds the robot's (ActionGoal out, StepResult in) and bag
replay's. An executor only executes and observes; deciding whether a step worked, retrying and
re-planning is the monitor's job (``planner.monitor``).
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

from emu_guide.types import ActionGoal, Frame, StepResult

__all__ = ["Executor", "ExecutorError", "PlanAheadExecutor", "SimExecutor"]


class ExecutorError(RuntimeError):
    """The executor cannot go on (no camera frame in time, the input ended, it is broken); the run
    fails with this message. Not for a goal that simply failed: that is a StepResult with success=False."""


@runtime_checkable
class Executor(Protocol):
    """Runs goals on a robot or a simulator and reports what the camera sees."""

    name: str

    def execute(self, goal: ActionGoal) -> StepResult:
        """Run one goal to completion (or failure); never raises for a goal that simply failed."""
        ...

    def check(self, goal: ActionGoal) -> bool | None:
        """Whether the goal's effect holds now, or None when this executor has no checker
        (the frames decide: planner.verify). An executor whose ``check`` reads the world's true
        state sets ``authoritative_check = True`` (it then decides alone); any other check (a
        robot's own StepResult) is a second opinion beside the frames (planner.monitor)."""
        ...

    def observe(self) -> Frame:
        """The current camera frame (raises ExecutorError when none can be had)."""
        ...

    def task_done(self) -> bool | None:
        """Whether the whole task is done now, or None when this executor cannot tell (the model's
        "done" then ends the run)."""
        ...


def _skill_errors() -> tuple[type[BaseException], ...]:
    """The exception types a sim skill raises for a bad goal (SkillError names the valid choices)."""
    errors: list[type[BaseException]] = [ValueError, KeyError]
    try:
        from sim_envs import SkillError  # type: ignore[attr-defined]

        errors.insert(0, SkillError)
    except ImportError:
        pass
    return tuple(errors)


class SimExecutor:
    """Runs goals through ``env.unwrapped.execute_skill`` (the scripted controllers)."""

    name = "sim"

    def __init__(self, env: Any, use_checker: bool = True) -> None:
        from emu_guide.env_protocol import EnvProtocolError, guidance_env

        self.env = env
        try:
            self.sim = guidance_env(env)  # the env, a wrapper or env.unwrapped: whichever has execute_skill
        except EnvProtocolError as exc:
            raise ExecutorError(f"SimExecutor: {exc}") from None
        self.use_checker = use_checker  # False: judge steps by frames only, as on a robot without a checker
        self.authoritative_check = use_checker  # the simulator's checker reads true state: it decides alone
        self._errors = _skill_errors()
        self._t0 = time.monotonic()

    def execute(self, goal: ActionGoal) -> StepResult:
        t0 = time.perf_counter()
        try:
            result = self.sim.execute_skill(goal)
        except self._errors as exc:
            return StepResult(goal.step_index, False, reason=f"{type(exc).__name__}: {exc}",
                              duration_s=time.perf_counter() - t0)
        if not isinstance(result, StepResult):
            raise ExecutorError(f"execute_skill returned {type(result).__name__}, expected StepResult")
        if not result.duration_s:
            result.duration_s = time.perf_counter() - t0
        return result

    def check(self, goal: ActionGoal) -> bool | None:
        if not self.use_checker or not hasattr(self.sim, "check_step"):
            return None
        try:
            return bool(self.sim.check_step(goal))
        except self._errors:
            return False  # a goal the checker cannot even interpret is not done

    def task_done(self) -> bool | None:
        if not self.use_checker or not hasattr(self.sim, "task_success"):
            return None
        return bool(self.sim.task_success())

    def observe(self) -> Frame:
        cam = getattr(self.sim, "camera", None)
        stamp = float(getattr(self.sim, "sim_time", time.monotonic() - self._t0))
        return Frame(self.sim.render(), stamp=stamp, frame_id=getattr(cam, "frame_id", "camera"))


class PlanAheadExecutor:
    """Plans ahead from one view: every goal counts as done without being run (one-shot plans).

    ``check`` says done only for the goal just "executed", so a step is never rejected as
    already done before it runs; ``observe`` keeps returning the same frame.
    """

    name = "plan_ahead"
    authoritative_check = True  # "done" by definition: the frame never changes, so it cannot tell

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self._executed: str | None = None

    def execute(self, goal: ActionGoal) -> StepResult:
        self._executed = goal.goal_id or id(goal)  # type: ignore[assignment]
        return StepResult(goal.step_index, True, reason="assumed done: planning ahead from one view")

    def check(self, goal: ActionGoal) -> bool | None:
        return True if self._executed is not None and self._executed == (goal.goal_id or id(goal)) else None

    def observe(self) -> Frame:
        return self.frame

    def task_done(self) -> bool | None:
        return None
