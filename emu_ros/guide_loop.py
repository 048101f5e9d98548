"""One guidance run (instruction -> plan steps with action goals), shared by the ROS node and bag replay.

No rclpy here: the node drives a ``GuideRun`` from its action-server thread, ``replay`` drives it
from bag frames, and both publish/write what it returns. The run wraps a ``GuidanceSession`` (the
history of done steps) and turns each backend step into an ``ActionGoal`` (the backend's own goal
when it has one, else the planner's parse of the sentence).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu_guide.types import ActionGoal, Frame, GoalStatus, Plan, PlanStatus, PlanStep
from model_runtime.backends.base import DecodeOptions


@dataclass(frozen=True)
class ObjectsInView:
    """What a detector saw in one camera frame (emu_guidance/ObjectsInView): grounded decoding's input."""

    stamp: float  # the camera frame the detection ran on
    known: tuple[str, ...]  # every name the detector can report (its class list)
    names: tuple[str, ...]  # the ones it sees in that frame

    def __post_init__(self) -> None:
        if not self.known:
            raise ValueError("ObjectsInView: the detector's known names are empty")
        unknown = sorted(set(self.names) - set(self.known))
        if unknown:
            raise ValueError(f"ObjectsInView: names {unknown} are not among the detector's known names")


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
    """One guidance request: a ``GuidanceSession`` (instruction, done steps) plus the plan record.

    ``step(frame)`` asks the session for the next step and attaches its ``ActionGoal``. The caller
    then says what became of it: ``record_result(step, success)`` when an executor reported (a
    success joins the session's history, a failure is planned again), or ``assume_done(step)`` to
    plan ahead from the same view (one-shot plans). A step neither confirmed nor assumed is
    proposed again from the next frame. ``plan`` records every step produced, in order.
    """

    backend: Any  # model_runtime.backends.base.GuidanceBackend
    instruction: str
    options: DecodeOptions = field(default_factory=DecodeOptions)
    max_steps: int = 20  # steps produced (proposals, including repeats) before the run stops
    image_size: tuple[int, int] | None = None  # (h, w) frames are resized to; None: the backend's
    vocabulary: Any = None  # planner.parse.Vocabulary for sentences the backend gave no goal for
    plan: Plan | None = None
    session: Any = None  # model_runtime.session.GuidanceSession (created in __post_init__)
    naming: Any = None  # planner.grounded.NameGrounding once a step was planned with ObjectsInView

    def __post_init__(self) -> None:
        from model_runtime.session import GuidanceSession

        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        # validates the instruction (empty, or words the model cannot encode) before any frame
        self.session = GuidanceSession(self.backend, self.instruction, self.options, max_steps=self.max_steps)
        self.plan = Plan(instruction=self.session.instruction, model_id=str(getattr(self.backend, "model_id", "")))

    @property
    def history(self) -> list[PlanStep]:
        return self.session.history

    @property
    def done(self) -> bool:
        """The backend said the task is complete, or the step budget is spent."""
        return bool(self.session.finished) or len(self.plan.steps) >= self.max_steps

    def step(self, frame: Frame, objects: ObjectsInView | None = None) -> PlanStep:
        """Plan the next step from ``frame``; BackendError / SessionError (a ValueError) propagate.

        ``objects``: what a detector saw in this frame. The step may then name only those objects
        (minus what confirmed steps put away, plus the held object): grounded decoding. None: free.
        """
        assert self.plan is not None
        size = self.image_size or tuple(getattr(self.backend, "image_size", (frame.height, frame.width)))
        frame_in = resize_frame(frame, (int(size[0]), int(size[1])))
        t0 = time.perf_counter()
        allowed = known = None
        if objects is not None:
            from planner.grounded import NameGrounding  # numpy-only planner module

            if self.naming is None:
                targets = self.vocabulary.targets if self.vocabulary is not None else ()
                self.naming = NameGrounding(objects.known, targets)
            elif set(objects.known) != set(self.naming.known):
                self.naming = dataclasses.replace(self.naming, known=tuple(objects.known))
            allowed, known = self.naming.allowed(objects.names), self.naming.known
        step = self.session.next_step(frame_in, allowed_names=allowed, known_names=known)
        step.goal = self._goal_for(step, frame)
        step.timings_ms.setdefault("total", (time.perf_counter() - t0) * 1e3)
        self.plan.steps.append(step)
        self.plan.stamp, self.plan.frame_id = frame.stamp, frame.frame_id
        return step

    def record_result(self, step: PlanStep, success: bool) -> None:
        """An executor reported on ``step``: success joins the history; failure plans it again."""
        if self.session.pending is not step or step.is_final:
            return
        if success:
            self.session.mark_done(step)
            if self.naming is not None and step.goal is not None:
                self.naming.confirm(step.goal)
        else:
            self.session.replan()

    def assume_done(self, step: PlanStep) -> None:
        """Plan ahead: treat ``step`` as done without an executor's word (one-shot plans)."""
        self.record_result(step, True)

    def finish(self, status: PlanStatus, error: str = "") -> Plan:
        assert self.plan is not None
        self.plan.status = PlanStatus(status)
        self.plan.error = error
        return self.plan

    def _goal_for(self, step: PlanStep, frame: Frame) -> ActionGoal | None:
        """The backend's goal, else the planner's parse of the sentence; stamped with the frame."""
        if step.is_final and step.goal is None:
            return None
        index = len(self.plan.steps) if self.plan else step.index
        goal = step.goal
        if goal is None:
            from planner.parse import parse_goal  # numpy-only planner module

            goal = parse_goal(step.text, self.vocabulary, step_index=index)
        else:
            goal = dataclasses.replace(goal)  # the backend may hand out its cached plan's objects
        goal.step_index = index
        goal.stamp = frame.stamp
        if not goal.goal_id:
            goal.goal_id = uuid.uuid4().hex
        if goal.status != GoalStatus.OK and not goal.reason:
            goal.reason = f"planner status {goal.status.value}"
        return goal
