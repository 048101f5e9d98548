"""One guidance run (instruction -> plan steps with action goals), shared by the ROS node and bag replay.

No rclpy here: the node drives a ``GuideRun`` from its action-server thread, ``replay`` drives it
from bag frames, and both publish/write what it returns. The run owns the history of done steps
and turns each backend step into an ``ActionGoal`` (the backend's own goal when it has one, else
the planner's parse of the sentence).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu_guide.types import ActionGoal, Frame, GoalStatus, Plan, PlanStatus, PlanStep
from emu_ros.backends.base import DecodeOptions


def resize_frame(frame: Frame, size: tuple[int, int]) -> Frame:
    """Resize to (height, width) with area interpolation when the size differs."""
    h, w = size
    if (frame.height, frame.width) == (h, w):
        return frame
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    import cv2

    image = cv2.resize(frame.image, (w, h), interpolation=cv2.INTER_AREA)
    return Frame(np.ascontiguousarray(image), stamp=frame.stamp, frame_id=frame.frame_id)


@dataclass
class GuideRun:
    """The state of one guidance request: instruction, options, done steps, the plan so far.

    ``step(frame)`` asks the backend for the next step; ``record_result`` tells the run whether
    an executed step worked (a failed step is dropped from the history so it is planned again).
    """

    backend: Any  # emu_ros.backends.base.GuidanceBackend
    instruction: str
    options: DecodeOptions = field(default_factory=DecodeOptions)
    max_steps: int = 20
    image_size: tuple[int, int] | None = None  # (h, w) frames are resized to; None: the backend's
    vocabulary: Any = None  # planner.parse.Vocabulary for sentences the backend gave no goal for
    history: list[PlanStep] = field(default_factory=list)  # steps accepted as done (or planned, one-shot)
    plan: Plan | None = None
    frames_used: int = 0

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError("the instruction is empty")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self.plan = Plan(instruction=self.instruction, model_id=str(getattr(self.backend, "model_id", "")))

    @property
    def done(self) -> bool:
        """The backend said the task is complete, or the step budget is spent."""
        steps = self.plan.steps if self.plan else []
        return bool(steps and steps[-1].is_final) or len(steps) >= self.max_steps

    def step(self, frame: Frame) -> PlanStep:
        """Plan the next step from ``frame``; raises BackendError (or ValueError) unchanged."""
        assert self.plan is not None
        size = self.image_size or tuple(getattr(self.backend, "image_size", (frame.height, frame.width)))
        frame_in = resize_frame(frame, (int(size[0]), int(size[1])))
        t0 = time.perf_counter()
        step = self.backend.next_step(frame_in, self.instruction, list(self.history), self.options)
        step.goal = self._goal_for(step, frame)
        step.timings_ms.setdefault("total", (time.perf_counter() - t0) * 1e3)
        self.frames_used += 1
        self.plan.steps.append(step)
        self.plan.stamp, self.plan.frame_id = frame.stamp, frame.frame_id
        self.history.append(step)
        return step

    def record_result(self, step: PlanStep, success: bool) -> None:
        """An executor reported on ``step``: a failure removes it from the history (plan it again)."""
        if not success and self.history and self.history[-1] is step:
            self.history.pop()

    def finish(self, status: PlanStatus, error: str = "") -> Plan:
        assert self.plan is not None
        self.plan.status = PlanStatus(status)
        self.plan.error = error
        return self.plan

    def _goal_for(self, step: PlanStep, frame: Frame) -> ActionGoal | None:
        """The backend's goal, else the planner's parse of the sentence; stamped with the frame."""
        if step.is_final and step.goal is None:
            return None
        goal = step.goal
        if goal is None:
            from planner.parse import parse_step  # numpy-only planner module

            goal = parse_step(step.text, self.vocabulary, step_index=len(self.plan.steps) if self.plan else 0)
        goal.step_index = len(self.plan.steps) if self.plan else step.index
        goal.stamp = frame.stamp
        if not goal.goal_id:
            goal.goal_id = uuid.uuid4().hex
        if goal.status != GoalStatus.OK and not goal.reason:
            goal.reason = f"planner status {goal.status.value}"
        return goal
