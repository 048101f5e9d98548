"""Shared test doubles for the planner tests (each stands in for hardware we do not have)."""

from __future__ import annotations

from emu_guide.types import ActionGoal, Frame, StepResult
from planner.executor import SimExecutor


class FailingExecutorForTest:
    """Stands in for a robot whose first ``failures`` skill executions fail without moving anything."""

    name = "failing-for-test"

    def __init__(self, inner: SimExecutor, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def execute(self, goal: ActionGoal) -> StepResult:
        self.calls += 1
        if self.calls <= self.failures:
            return StepResult(goal.step_index, False, reason="gripper slipped (test)")
        return self.inner.execute(goal)

    def check(self, goal: ActionGoal) -> bool | None:
        return self.inner.check(goal)

    def observe(self) -> Frame:
        return self.inner.observe()
