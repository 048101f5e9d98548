"""The safety gate: the last check before an ActionGoal can reach an executor (robot, sim, bag).

The one step loop (``planner.loop``) calls ``SafetyGate.check`` on every goal it built, after
parse and grounding and before the execution monitor. A goal the gate rejects comes back with
status UNKNOWN and the reason ``"safety gate: ..."``: the monitor never executes a goal that is
not ``ok``, the step is planned again, and the rejection is counted under its check.

Checks, in order (the first that fails decides):

1. ``verb``: the goal's verb is one of ``allowed_verbs``.
2. ``object`` / ``target``: each name the goal acts on is grounded, i.e. seen in this frame by
   the detector (``ObjectsInView``), located by the planner's own perception (the grounder found
   it in the frame), or listed in a configured vocabulary (``vocabulary`` here, or the scene
   ``Vocabulary`` the loop was given). Anything else ("the robot arm itself") is not ok.
3. ``workspace``: a target position lies inside the configured box, given in the goal's frame
   (``workspace_frame``; a pose in another frame is rejected: it cannot be checked).
4. rate: at most ``max_goal_rate_hz`` goals leave per second; a faster goal is held until its
   slot (never rejected for speed alone, unless the run is stopped while it waits).
5. ``approval`` (``require_approval``): the goal is held until someone approves or denies it
   (the ROS node's ``~/approve_goal`` service), or ``approval_timeout_s`` passes (rejected).

Goals that are already not ``ok`` (unparsed, ungrounded by the grounder) pass through untouched.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from emu_guide.types import VERBS, ActionGoal, GoalStatus

__all__ = ["ApprovalDesk", "GateDecision", "SafetyConfig", "SafetyGate", "parse_names", "parse_workspace"]

ACTION_VERBS = tuple(v for v in VERBS if v != "done")  # "done" is never an action
RESERVED_VERBS = ("done", "stop")  # the model's end of task; the node's stop signal to the executor
REJECTION_KINDS = ("verb", "object", "target", "workspace", "approval", "stopped")


@dataclass
class SafetyConfig:
    allowed_verbs: tuple[str, ...] = ACTION_VERBS  # verbs an executor may receive
    vocabulary: tuple[str, ...] = ()  # names grounded by configuration (fixed zones, receptacles, parts)
    workspace_min: tuple[float, float, float] | None = None  # box corner (metres); None: no position check
    workspace_max: tuple[float, float, float] | None = None
    workspace_frame: str = ""  # frame the box is given in; '' = whatever frame the goal's pose is in
    max_goal_rate_hz: float = 0.0  # goals leaving per second at most (0 = no limit); faster ones are held
    require_approval: bool = False  # hold each goal until it is approved (``approver``) or times out
    approval_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        self.allowed_verbs = tuple(v.strip().lower() for v in self.allowed_verbs)
        # the built-in verbs or an environment's own (one lowercase word); never "done" or "stop"
        bad = [v for v in self.allowed_verbs if v in RESERVED_VERBS or not re.fullmatch(r"[a-z][a-z_]*", v)]
        if bad:
            raise ValueError(f"SafetyConfig.allowed_verbs: {bad} are not action verbs (e.g. {list(ACTION_VERBS)}; "
                             f"never {list(RESERVED_VERBS)})")
        self.vocabulary = tuple(n.strip().lower() for n in self.vocabulary if n.strip())
        if (self.workspace_min is None) != (self.workspace_max is None):
            raise ValueError("SafetyConfig: workspace_min and workspace_max go together")
        if self.workspace_min is not None and self.workspace_max is not None:
            lo, hi = tuple(map(float, self.workspace_min)), tuple(map(float, self.workspace_max))
            if len(lo) != 3 or len(hi) != 3 or not all(math.isfinite(x) for x in lo + hi):
                raise ValueError(f"SafetyConfig: workspace corners must be 3 finite numbers, got {lo}, {hi}")
            if any(a >= b for a, b in zip(lo, hi)):
                raise ValueError(f"SafetyConfig: workspace_min {lo} must be below workspace_max {hi} on every axis")
            self.workspace_min, self.workspace_max = lo, hi  # type: ignore[assignment]
        if not (self.max_goal_rate_hz >= 0 and math.isfinite(self.max_goal_rate_hz)):
            raise ValueError(f"SafetyConfig.max_goal_rate_hz must be >= 0, got {self.max_goal_rate_hz}")
        if not self.approval_timeout_s > 0:
            raise ValueError(f"SafetyConfig.approval_timeout_s must be > 0, got {self.approval_timeout_s}")


def parse_names(text: str) -> tuple[str, ...]:
    """'pick, place' -> ('pick', 'place'): the comma-separated lists of ROS parameters."""
    return tuple(n.strip().lower() for n in text.split(",") if n.strip())


def parse_workspace(text: str) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """'xmin,ymin,zmin,xmax,ymax,zmax' -> the box corners; '' -> None. ValueError names the problem."""
    if not text.strip():
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"workspace {text!r} is not 6 comma-separated numbers") from None
    if len(values) != 6:
        raise ValueError(f"workspace {text!r} needs 6 numbers (xmin,ymin,zmin,xmax,ymax,zmax), got {len(values)}")
    return (values[0], values[1], values[2]), (values[3], values[4], values[5])


@dataclass
class GateDecision:
    ok: bool
    reason: str  # why rejected ('' when ok)
    kind: str = ""  # which check rejected (REJECTION_KINDS)
    held_s: float = 0.0  # time held for the rate limit and approval


# approver(goal, stop) -> (approved, reason), or None when nobody decided in time
Approver = Callable[[ActionGoal, Callable[[], bool]], "tuple[bool, str] | None"]


@dataclass
class SafetyGate:
    config: SafetyConfig = field(default_factory=SafetyConfig)
    approver: Approver | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.config.require_approval and self.approver is None:
            raise ValueError("SafetyGate: require_approval needs an approver (the node's approval service)")
        self._lock = threading.Lock()
        self._last_sent: float | None = None
        self.passed = 0
        self.rejected = 0
        self.by_kind: dict[str, int] = {}
        self.last_reason = ""
        self.check_ms: list[float] = []  # gate time per goal, held time excluded (bounded)

    # -- the check ----------------------------------------------------------------------------
    def check(self, goal: ActionGoal, seen: Iterable[str] | None = None, perceived: Iterable[str] = (),
              scene: Iterable[str] = (), stop: Callable[[], bool] | None = None) -> GateDecision:
        """Decide on ``goal`` and mark it: a rejected goal gets status UNKNOWN and the reason.

        ``seen``: names the detector saw in the goal's frame; ``perceived``: names the planner's
        own perception located there; ``scene``: a scene vocabulary (the loop's ``Vocabulary``).
        """
        if goal.status != GoalStatus.OK:
            return GateDecision(False, goal.reason, "")  # not ok already: nothing to send, nothing counted
        t0 = self.clock()
        decision = self._static(goal, seen, perceived, scene)
        check_ms = (self.clock() - t0) * 1e3
        if decision is None:
            decision = self._hold(goal, stop or (lambda: False))
        with self._lock:
            self.check_ms = [*self.check_ms[-255:], check_ms]
            if decision.ok:
                self.passed += 1
            else:
                self.rejected += 1
                self.by_kind[decision.kind] = self.by_kind.get(decision.kind, 0) + 1
                self.last_reason = decision.reason
        if not decision.ok:
            goal.status = GoalStatus.UNKNOWN
            goal.reason = f"safety gate: {decision.reason}"
        return decision

    def _static(self, goal: ActionGoal, seen: Iterable[str] | None, perceived: Iterable[str],
                scene: Iterable[str]) -> GateDecision | None:
        c = self.config
        if goal.verb not in c.allowed_verbs:
            return GateDecision(False, f"verb {goal.verb!r} is not allowed (allowed: {', '.join(c.allowed_verbs)})", "verb")
        grounded = {*c.vocabulary, *(_norm(n) for n in scene), *(_norm(n) for n in perceived), *(_norm(n) for n in seen or ())}
        obj = _norm(goal.object)
        if not obj:
            return GateDecision(False, f"a {goal.verb!r} goal names no object", "object")
        if obj not in grounded:
            return GateDecision(False, f"object {goal.object!r} is not grounded ({_sources(seen)})", "object")
        if goal.target and _norm(goal.target) not in grounded:
            return GateDecision(False, f"target {goal.target!r} is not grounded ({_sources(seen)})", "target")
        if goal.target_pose is not None and c.workspace_min is not None and c.workspace_max is not None:
            if c.workspace_frame and goal.frame_id != c.workspace_frame:
                return GateDecision(False, f"target pose is in frame {goal.frame_id!r}, the workspace in {c.workspace_frame!r}",
                                    "workspace")
            outside = [f"{axis}={v:.3f} not in [{lo:g}, {hi:g}]"
                       for axis, v, lo, hi in zip("xyz", goal.target_pose, c.workspace_min, c.workspace_max)
                       if not lo <= v <= hi]  # fmt: skip
            if outside:
                return GateDecision(False, f"target pose outside the workspace: {'; '.join(outside)}", "workspace")
        return None

    def _hold(self, goal: ActionGoal, stop: Callable[[], bool]) -> GateDecision:
        """Rate limit and approval: the goal waits here; stopped or denied -> rejected."""
        t0 = self.clock()
        if self.config.max_goal_rate_hz > 0 and self._last_sent is not None:
            due = self._last_sent + 1.0 / self.config.max_goal_rate_hz
            while (now := self.clock()) < due:
                if stop():
                    return GateDecision(False, "stopped while held for the goal rate limit", "stopped", now - t0)
                self.sleep(min(0.02, due - now))
        if self.config.require_approval:
            assert self.approver is not None
            answer = self.approver(goal, stop)
            if answer is None:
                why = "stopped while waiting for approval" if stop() else \
                    f"not approved within approval_timeout_s={self.config.approval_timeout_s:g} s"
                return GateDecision(False, why, "stopped" if stop() else "approval", self.clock() - t0)
            approved, reason = answer
            if not approved:
                return GateDecision(False, f"denied by the operator: {reason or 'no reason given'}", "approval", self.clock() - t0)
        self._last_sent = self.clock()
        return GateDecision(True, "", "", self._last_sent - t0)

    # -- counters (diagnostics, feedback) -------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            ms = sorted(self.check_ms)
            return {"passed": self.passed, "rejected": self.rejected, "rejected_by_check": dict(self.by_kind),
                    "last_rejection": self.last_reason,
                    "check_ms_max": round(ms[-1], 4) if ms else 0.0}  # fmt: skip


def _norm(name: str) -> str:
    return name.strip().lower()


def _sources(seen: Iterable[str] | None) -> str:
    detector = "no detection for this frame" if seen is None else "the detector does not see it"
    return f"{detector}, the planner did not locate it, and it is in no configured vocabulary"


class ApprovalDesk:
    """Goals held for approval, one decision each (the ROS node's approval service writes here).

    ``request`` (the gate's approver) announces the goal through ``announce`` and blocks until
    ``decide(goal_id, approve, reason)`` answers, the run stops, or ``timeout_s`` passes.
    """

    def __init__(self, timeout_s: float, announce: Callable[[ActionGoal], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.announce = announce
        self._cond = threading.Condition()
        self._pending: dict[str, ActionGoal] = {}
        self._answers: dict[str, tuple[bool, str]] = {}

    def request(self, goal: ActionGoal, stop: Callable[[], bool]) -> tuple[bool, str] | None:
        with self._cond:
            self._pending[goal.goal_id] = goal
        if self.announce is not None:
            self.announce(goal)
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            try:
                while goal.goal_id not in self._answers:
                    if time.monotonic() >= deadline or stop():
                        return None
                    self._cond.wait(0.05)
                return self._answers.pop(goal.goal_id)
            finally:
                self._pending.pop(goal.goal_id, None)

    def pending(self) -> list[str]:
        with self._cond:
            return list(self._pending)

    def decide(self, goal_id: str, approve: bool, reason: str = "") -> tuple[bool, str]:
        """(accepted, message): False when no goal with that id is waiting."""
        with self._cond:
            if goal_id not in self._pending:
                waiting = ", ".join(self._pending) or "none"
                return False, f"no goal {goal_id!r} is waiting for approval (waiting: {waiting})"
            self._answers[goal_id] = (bool(approve), reason)
            self._cond.notify_all()
        return True, ("approved" if approve else "denied") + f" goal {goal_id}"
