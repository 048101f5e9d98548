"""A guidance session: one instruction, the steps done so far, and the backend that plans them.

    session = GuidanceSession(load_backend("torch"), "clear the table", DecodeOptions())
    step = session.next_step(frame)      # PlanStep: sentence + subgoal image
    seen = session.perceive(frame)       # "perceive" models: what the model sees (no step)
    judged = session.check(frame, after, step.text)  # models with a step verifier: did it happen?
    ...execute step...
    session.mark_done(step)              # it worked: it joins the history
    session.replan()                     # or: forget the pending step and ask again from the next frame

A re-plan after a rejected step (``replan(reject=True)``, the default) also tells the decoder not to
give that answer again for this step: greedy decoding would otherwise repeat it forever. The list
of rejected answers is cleared when a step is marked done.

The session validates the instruction up front (a backend that knows its vocabulary, like the
default word-level model, rejects unknown words here, not deep inside decoding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from emu_guide.types import Frame, Plan, PlanStatus, PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions, GuidanceBackend, Perceived, StepCheck

__all__ = ["GuidanceSession", "SessionError"]


class SessionError(ValueError):
    """The session was used out of order (a step marked done that was never proposed...)."""


@dataclass
class GuidanceSession:
    backend: GuidanceBackend
    instruction: str
    options: DecodeOptions = field(default_factory=DecodeOptions)
    max_steps: int = 32  # a plan longer than this is a runaway model, not a task
    history: list[PlanStep] = field(default_factory=list)  # steps done, in order
    pending: PlanStep | None = None  # proposed by next_step, not yet done
    finished: bool = False  # the model said the task is complete
    rejected: list[PlanStep] = field(default_factory=list)  # answers rejected for the current step

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise SessionError("the instruction is empty")
        self.instruction = " ".join(self.instruction.split())
        if not isinstance(self.options, DecodeOptions):
            raise SessionError(f"options must be DecodeOptions, got {type(self.options).__name__}")
        check = getattr(self.backend, "check_instruction", None)
        if check is not None:
            check(self.instruction)  # BackendError naming the unknown words

    @property
    def perceives(self) -> bool:
        """Whether the backend can say what it sees in a frame alone (``perceive``): a scene perceiver in
        its model directory, or answers in the "perceive" format."""
        fmt = getattr(self.backend, "answer_format", "step") == "perceive"
        return bool(getattr(self.backend, "perceives", fmt)) and hasattr(self.backend, "perceive")

    @property
    def perceived_names(self) -> tuple[str, ...]:
        """Every object name the model's scene perceiver can report (empty: the model has none)."""
        return tuple(getattr(self.backend, "perceived_names", ()))

    def perceive(self, frame: Frame, history: Sequence[PlanStep] | None = None) -> Perceived:
        """What the model sees in ``frame`` (a perception-only decode), with the done steps as history
        (or ``history``). BackendError when the backend cannot perceive (``perceives`` is False)."""
        if not self.perceives:
            raise BackendError(f"backend {getattr(self.backend, 'name', '?')!r} does not perceive"
                               " (no scene perceiver, and its answers are not in the 'perceive' format)")
        options = dataclasses.replace(self.options, perception=None)
        steps = list(self.history if history is None else history)
        return self.backend.perceive(frame, self.instruction, steps, options)  # type: ignore[attr-defined]

    @property
    def checks(self) -> bool:
        """Whether the backend's model has a step verifier (``check``: did a step happen between two frames)."""
        return bool(getattr(self.backend, "checks", False)) and hasattr(self.backend, "check_step")

    def check(self, before: Frame, after: Frame, step_text: str) -> StepCheck:
        """The model's judgement of whether ``step_text`` happened between ``before`` (the frame it was
        planned on) and ``after`` (model_runtime/step_verifier.py). BackendError when ``checks`` is False."""
        if not self.checks:
            raise BackendError(f"backend {getattr(self.backend, 'name', '?')!r} has no step verifier")
        return self.backend.check_step(before, after, step_text)  # type: ignore[attr-defined]

    def next_step(
        self, frame: Frame, allowed_names: Sequence[str] | None = None, known_names: Sequence[str] | None = None,
        perception: str | None = None, on_text: Callable[[PlanStep], None] | None = None,
    ) -> PlanStep:
        """The next step given the current frame; repeats replace a still-pending proposal.

        ``allowed_names``: grounded decoding for this call (the names the caller's detector sees in
        ``frame``, and may be named); ``known_names`` (default ``options.known_names``) every name it
        can report. None keeps the options as they are. ``perception``: what ``perceive`` said of
        this same frame, teacher-forced as the answer's start (decoded once, not twice).
        ``on_text``: streaming, see ``DecodeOptions.on_text``.
        """
        if self.finished:
            raise SessionError("the task is already complete; start a new session")
        if len(self.history) >= self.max_steps:
            raise SessionError(f"{self.max_steps} steps done without the model saying the task is complete")
        options = self.options
        if self.rejected:
            options = dataclasses.replace(
                options,
                avoid_texts=tuple(dict.fromkeys([*options.avoid_texts, *(r.text for r in self.rejected if not r.is_final)])),
                avoid_final=options.avoid_final or any(r.is_final for r in self.rejected),
            )
        if allowed_names is not None:
            known = tuple(known_names) if known_names is not None else options.known_names
            if not known:
                raise SessionError("allowed_names needs known_names (the names a detector can recognise)")
            options = dataclasses.replace(options, known_names=known, allowed_names=tuple(allowed_names))
        if perception is not None or options.perception is not None:
            options = dataclasses.replace(options, perception=perception)
        if on_text is not None:
            options = dataclasses.replace(options, on_text=on_text)
        step = self.backend.next_step(frame, self.instruction, list(self.history), options)
        if step.index != len(self.history):
            raise BackendError(f"backend returned step index {step.index}, expected {len(self.history)}")
        self.pending = step
        if step.is_final:
            self.finished = True
        return step

    def mark_done(self, step: PlanStep | None = None) -> None:
        """Record the pending step as executed successfully."""
        if self.pending is None:
            raise SessionError("no pending step to mark done (call next_step first)")
        if step is not None and step is not self.pending:
            raise SessionError(f"step {step.index} {step.text!r} is not the pending step {self.pending.text!r}")
        if self.pending.is_final:
            raise SessionError("the final step is not an action; nothing to mark done")
        self.history.append(self.pending)
        self.pending = None
        self.rejected = []

    def replan(self, reject: bool = True) -> None:
        """Drop the pending proposal; history stays.

        ``reject=True``: the proposal was wrong (unparseable, not groundable, failed, or a premature
        "done"): the next proposals for this step avoid it. ``reject=False``: only the world changed.
        """
        if reject and self.pending is not None:
            self.rejected.append(self.pending)
        self.pending = None
        self.finished = False

    def plan(self) -> Plan:
        """The session so far as a Plan (done steps, then the pending one if any)."""
        steps = list(self.history) + ([self.pending] if self.pending is not None else [])
        status = PlanStatus.SUCCEEDED if self.finished else PlanStatus.RUNNING
        return Plan(instruction=self.instruction, steps=steps, model_id=getattr(self.backend, "model_id", ""), status=status)
