"""Execution monitor: send a goal, decide whether the step is done, retry, ask for a re-plan.

Every decision goes into ``events`` (a JSON-serialisable list) with the reason, so a report can
say exactly why an episode went the way it did.

Is a step done? After every attempt the frame verifier (``planner.verify.FrameVerifier``) judges
the new frame: the model's step check (models trained on them), else its perception of the frame
against the step's goal ("perceive" models), else the new frame against the predicted subgoal
image (``subgoal_progress``). Then:

1. An executor whose checker reads the world's true state (``authoritative_check``: the
   simulator's checker) decides alone; the frames' verdict is recorded beside it.
2. Another executor's check (a robot's own StepResult) is a second opinion: when the model read
   the frame (a step check or perception), the step is done only if both say so; when it could
   not, the executor's report decides.
3. No checker: the frames decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from emu_guide.types import ActionGoal, Frame, GoalStatus, PlanStep, StepResult
from planner.executor import Executor
from planner.verify import FrameVerdict, FrameVerifier, subgoal_progress

__all__ = ["Event", "ExecutionMonitor", "MonitorConfig", "StepOutcome", "subgoal_progress"]


@dataclass
class MonitorConfig:
    max_retries: int = 1  # re-sends of the same goal after a failed attempt (then a re-plan)
    max_replans: int = 3  # re-plans allowed for one step before the episode fails
    max_attempts: int = 60  # executed goals per episode, all attempts together (step limit)
    max_planning_calls: int = 80  # backend calls per episode
    time_limit_s: float = 300.0  # wall clock per episode
    progress_threshold: float = 0.5  # subgoal_progress needed when there is no checker
    change_threshold: int = 40  # per-pixel max-channel difference that counts as "changed" (0-255)
    min_confidence: float = 0.0  # grounding confidence below this -> re-plan (robots: > 0; the sim acts by name)
    # A step the checker already calls done before anything is executed makes no progress (e.g.
    # "pick up the blue cup" once the cup is in the rack): re-plan with it rejected instead of
    # counting it, or a model that repeats a finished step loops until the step limit.
    reject_already_done: bool = True

    @classmethod
    def for_request(cls, max_steps: int, max_retries: int = 1) -> MonitorConfig:
        """A guidance request's budget (a ROS Guide goal, a bag replay): ``max_steps`` planning calls,
        and per step and per episode the same limits as a bench episode (the defaults: ``max_replans``
        re-plans of one step, at most ``max_attempts`` goals executed; fewer when ``max_steps`` is
        smaller), so a goal and a bench episode with the same budget decide alike; no wall-clock
        limit (the caller cancels)."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        return cls(max_planning_calls=max_steps, max_replans=min(max_steps, cls.max_replans), max_retries=max_retries,
                   max_attempts=min(cls.max_attempts, max_steps * (1 + max_retries) + 1), time_limit_s=float("inf"))

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_replans < 0:
            raise ValueError(f"max_retries/max_replans must be >= 0, got {self.max_retries}, {self.max_replans}")
        if self.max_attempts < 1 or self.max_planning_calls < 1:
            raise ValueError("max_attempts and max_planning_calls must be >= 1")
        if self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if not 0.0 <= self.progress_threshold <= 1.0:
            raise ValueError(f"progress_threshold must be in [0, 1], got {self.progress_threshold}")


@dataclass
class Event:
    """One decision: when (seconds since the episode began), what, for which step, and why."""

    t: float
    kind: str  # plan | parse | ground | execute | check | retry | replan | limit | final | error
    step: int
    why: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepOutcome:
    status: str  # "done" | "failed" (re-plan) | "limit" (episode must stop)
    attempts: int
    reason: str
    before: Frame
    after: Frame
    results: list[StepResult] = field(default_factory=list)
    progress: float | None = None  # subgoal_progress of the last check, when pixels were compared
    verdict: FrameVerdict | None = None  # what the last post-step frame said (perception or pixels)
    # "checker" | "check" | "perception" | "subgoal" | "executor" | "check+executor" | "perception+executor" | "none"
    decided_by: str = ""


class ExecutionMonitor:
    """Runs one plan step through an executor with retries; records every decision."""

    def __init__(
        self,
        executor: Executor,
        config: MonitorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        verifier: Callable[[PlanStep, ActionGoal, Frame, Frame], FrameVerdict] | None = None,
    ) -> None:
        self.executor = executor
        self.config = config or MonitorConfig()
        # Judges the post-step frame (planner.verify); default: pixels only (no model perception).
        self.verifier = verifier or FrameVerifier(None, self.config.progress_threshold, self.config.change_threshold)
        self.clock = clock
        self.events: list[Event] = []
        self.t_start = clock()
        self.attempts = 0  # goals executed this episode
        self.planning_calls = 0

    # -- record keeping -----------------------------------------------------------------------
    def record(self, kind: str, step: int, why: str, **data: Any) -> Event:
        ev = Event(t=round(self.clock() - self.t_start, 6), kind=kind, step=step, why=why, data=_jsonable(data))
        self.events.append(ev)
        return ev

    def events_json(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.events]

    # -- limits -------------------------------------------------------------------------------
    def limit_reached(self, planning: bool = True) -> str | None:
        """The reason the episode must stop now, or None. ``planning=False``: only the limits on
        executing (a step already planned within the planning budget may still run)."""
        c = self.config
        elapsed = self.clock() - self.t_start
        if elapsed > c.time_limit_s:
            return f"time limit: {elapsed:.1f} s > {c.time_limit_s:.1f} s"
        if self.attempts >= c.max_attempts:
            return f"step limit: {self.attempts} goals executed (max_attempts={c.max_attempts})"
        if planning and self.planning_calls >= c.max_planning_calls:
            return f"planning limit: {self.planning_calls} backend calls (max_planning_calls={c.max_planning_calls})"
        return None

    # -- the decision -------------------------------------------------------------------------
    def decide(self, step: PlanStep, goal: ActionGoal, before: Frame, after: Frame) -> tuple[bool, str, str, FrameVerdict]:
        """(done, why, decided_by, the frames' verdict) for a step after an attempt (module docstring)."""
        checked = self.executor.check(goal)
        frames = self.verifier(step, goal, before, after)
        seen = f"frames ({frames.by}): {'done' if frames.done else 'not done'}: {frames.reason}"
        if checked is not None and getattr(self.executor, "authoritative_check", False):
            return checked, f"checker says {'done' if checked else 'not done'}; second opinion, {seen}", "checker", frames
        if checked is not None and frames.by in ("check", "perception"):  # the model read the frame
            done = bool(frames.done and checked)
            report = "reports success" if checked else "reports failure"
            if frames.done == checked:
                why = f"{seen}; the executor {report}"
            else:
                why = f"{seen}; the executor {report}: {'not ' if not done else ''}done (both must agree)"
            return done, why, f"{frames.by}+executor", frames
        if checked is not None:
            return checked, (f"the executor {'reports success' if checked else 'reports failure'}; {seen}"
                             " (perception cannot tell, so the executor's report decides)"), "executor", frames
        if frames.done is None:
            return False, f"cannot confirm the step: {frames.reason}", "none", frames
        return frames.done, seen, frames.by, frames

    def run_step(self, step: PlanStep, goal: ActionGoal, before: Frame) -> StepOutcome:
        """Execute ``goal`` (up to 1 + max_retries attempts) and decide whether ``step`` is done."""
        idx = step.index
        if goal.status != GoalStatus.OK:
            self.record("replan", idx, f"goal is {goal.status.value}: {goal.reason}", text=step.text)
            return StepOutcome("failed", 0, f"goal {goal.status.value}: {goal.reason}", before, before)
        if goal.confidence < self.config.min_confidence:
            why = f"grounding confidence {goal.confidence:.2f} < {self.config.min_confidence}"
            self.record("replan", idx, why, text=step.text)
            return StepOutcome("failed", 0, why, before, before)
        if self.config.reject_already_done and self.executor.check(goal):
            why = "already done before executing: the step would make no progress"
            self.record("replan", idx, why, text=step.text)
            return StepOutcome("failed", 0, why, before, before)
        results: list[StepResult] = []
        after = before
        progress = None
        verdict: FrameVerdict | None = None
        by = ""
        reason = ""
        for attempt in range(1 + self.config.max_retries):
            limit = self.limit_reached(planning=False)
            if limit:
                self.record("limit", idx, limit)
                return StepOutcome("limit", attempt, limit, before, after, results, progress, verdict, by)
            self.attempts += 1
            result = self.executor.execute(goal)
            results.append(result)
            after = self.executor.observe()
            self.record("execute", idx, result.reason or ("skill finished" if result.success else "skill failed"),
                        attempt=attempt, success=result.success, duration_s=result.duration_s, goal=goal.to_dict())
            done, reason, by, verdict = self.decide(step, goal, before, after)
            progress = verdict.progress
            if not result.success and done:
                reason = f"{reason} (the skill reported failure: {result.reason})"
            self.record("check", idx, reason, done=done, progress=progress, decided_by=by, frames=verdict.by,
                        frames_done=verdict.done, perception=verdict.perception_text or None,
                        perceive_ms=verdict.perceive_ms, p_happened=verdict.p_happened)
            if done:
                return StepOutcome("done", attempt + 1, reason, before, after, results, progress, verdict, by)
            if attempt < self.config.max_retries:
                self.record("retry", idx, f"attempt {attempt + 1} not done: {reason}")
        why = f"not done after {len(results)} attempt(s): {reason}"
        self.record("replan", idx, why)
        return StepOutcome("failed", len(results), why, before, after, results, progress, verdict, by)


def _jsonable(value: Any) -> Any:
    """Plain JSON types only (numpy scalars and arrays converted, enums to their value)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
