"""The one guidance step loop: `emu-guide bench`, `emu-guide demo`, the ROS node and bag replay run it.

One iteration is one planning call:

    frame -> plan step (model) -> parse with context -> ground -> check -> execute -> verify
          -> confirm (the step joins the history) or re-plan (the step is rejected, ask again)

Verify (``planner.verify``): a model with a step verifier judges from the frame the step was
planned on and the post-step frame whether the step happened; a "perceive" model perceives the
post-step frame (a perception-only decode) and, without a step verifier, the perception is
compared with the step's goal; without either, the new frame against the predicted subgoal
image. That perception is the start of the next answer about the same frame: the next planning
call teacher-forces it instead of decoding it again.

What differs between the places that run it plugs in behind small interfaces:

- ``Executor`` (``planner.executor``): runs a goal and observes the next frame. The sim's skill
  controller (``SimExecutor``, with the simulator's checker as its ``check``), the ROS node's
  (publishes the ActionGoal, waits for the robot's StepResult), bag replay's (the next recorded
  frame; the recording's robot acted in between) and planning ahead from one view
  (``PlanAheadExecutor``, the node's one-shot mode).
- ``ObjectsSource``: what a detector sees in a frame, for grounded decoding (the sim's detector,
  or the ROS ``ObjectsInView`` topic).
- ``GroundTruth``: evaluation only (bench and demo metrics). The loop never decides anything on it.

Status semantics are the same everywhere: SUCCEEDED when the model says the task is done and the
executor does not contradict it; FAILED on a spent budget (planning calls, executed goals, time,
re-plans of one step), a backend error or an executor error (no camera frame, the bag ended);
CANCELED when ``should_stop`` says so (ROS cancel and preemption).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from emu_guide.types import ActionGoal, Frame, GoalStatus, Plan, PlanStatus, PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions, GuidanceBackend
from model_runtime.prompt import parse_perception
from model_runtime.session import GuidanceSession, SessionError
from planner.executor import Executor, ExecutorError
from planner.grounded import NameGrounding, ObjectsInView
from planner.grounding import Grounder, GroundingInfo
from planner.metrics import capped_psnr, subgoal_position_error
from planner.monitor import ExecutionMonitor, MonitorConfig, StepOutcome, _jsonable
from planner.parse import ParseContext, Vocabulary, parse
from planner.safety import SafetyGate
from planner.verify import PICK_VERBS, FrameVerifier, perception_match

__all__ = ["GroundTruth", "GuidanceLoop", "LoopConfig", "LoopResult", "ObjectsSource", "StepRecord", "resize_frame"]


@dataclass
class LoopConfig:
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # Grounded decoding: the model may name only the objects the ObjectsSource sees, minus those put
    # away by confirmed steps, plus the held object (planner/grounded.py). Off without a source.
    grounded_decoding: bool = False
    frame_size: tuple[int, int] | None = None  # (h, w) frames are resized to before the model; None: the backend's image_size
    keep_images: bool = True  # keep before/subgoal/after images per step (reports need them)
    # Plan-ahead requests (the ROS one-shot mode): the run succeeds once this many steps are planned,
    # a plan delivered rather than a task done. None: run until the task is done or a limit.
    horizon: int | None = None

    def __post_init__(self) -> None:
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 or None, got {self.horizon}")


class ObjectsSource(Protocol):
    """What a detector sees in a frame (grounded decoding's input); None: no detection for this frame."""

    def objects_for(self, frame: Frame) -> ObjectsInView | None: ...


class GroundTruth(Protocol):
    """Evaluation only: the simulator's plan, for step metrics. The loop never decides on it."""

    camera: Any  # CameraModel for metric errors on the table plane (or None)

    def steps_done(self) -> int: ...

    def step(self, k: int) -> PlanStep | None: ...

    def image(self, k: int) -> np.ndarray | None: ...

    def grounding_error_m(self, name: str, info: GroundingInfo) -> float | None: ...

    # Optional: ``perception() -> dict | None``, what the current frame truly shows, as the "perceive"
    # answers list it ({"objects": [{"name", "cell"}], "holding"}); shown next to the model's.


@dataclass
class StepRecord:
    """One planning call and what came of it."""

    call: int  # planning call number in the run
    index: int  # steps confirmed before this call (the goal's step_index)
    gt_index: int | None  # ground-truth step the state was at when planning (evaluation only)
    text: str
    gt_text: str | None
    goal: dict[str, Any]
    gt_goal: dict[str, Any] | None
    outcome: str  # done | failed | limit | final | final_rejected | backend_error
    reason: str
    attempts: int
    latency_ms: dict[str, float]  # backend timings + "planner" (parse + ground) + "detect"
    text_exact: bool | None = None  # sentence equals the ground-truth sentence
    goal_correct: bool | None = None  # (verb, object, target) equals the ground-truth goal's
    subgoal_psnr: float | None = None  # predicted vs ground-truth subgoal image (dB, capped at 100)
    subgoal_pos_error_px: float | None = None  # acted object's position, predicted vs ground-truth subgoal
    subgoal_pos_error_m: float | None = None  # the same on the table plane, metres
    grounding_error_m: float | None = None  # pick steps: grounded object position vs the simulator's (x, y)
    progress: float | None = None  # frame verification: how far the new frame went towards the subgoal
    perception: dict[str, Any] | None = None  # "perceive" models: what the model saw in the frame before the step
    perception_reused: bool = False  # that perception was the previous verification's, teacher-forced
    gt_perception: dict[str, Any] | None = None  # evaluation only: what the frame before truly showed
    perception_match: dict[str, Any] | None = None  # perception vs gt_perception (planner.verify.perception_match)
    # The verify step: {"done", "decided_by", "reason", "frames": {by, done, reason, perception, progress,
    # perceive_ms}, "gt_after", "after_match"} (gt_*: evaluation only); None when nothing was executed.
    verification: dict[str, Any] | None = None
    allowed_names: list[str] | None = None  # grounded decoding: the names this step was allowed (None: free)
    grounding: dict[str, Any] = field(default_factory=dict)
    before: np.ndarray | None = None
    subgoal: np.ndarray | None = None
    after: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("before", "subgoal", "after")}
        return _jsonable(d)


@dataclass
class LoopResult:
    status: PlanStatus
    stop_reason: str
    plan: Plan  # every step produced, in order, with its goal; status and error set
    records: list[StepRecord]
    events: list[dict[str, Any]]
    replans: int
    retries: int
    planning_calls: int
    attempts: int
    wall_s: float
    final_frame: Frame | None


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


def _goal_key(goal: ActionGoal | None) -> tuple[str, str, str | None] | None:
    if goal is None:
        return None
    return goal.verb, goal.object.lower().strip(), (goal.target or None) and goal.target.lower().strip()


class GuidanceLoop:
    """One guidance request run to its end: ``GuidanceLoop(...).run() -> LoopResult``."""

    def __init__(
        self,
        backend: GuidanceBackend,
        instruction: str,
        executor: Executor,
        config: LoopConfig | None = None,
        vocabulary: Vocabulary | None = None,
        grounder: Grounder | None = None,
        objects: ObjectsSource | None = None,
        ground_truth: GroundTruth | None = None,
        on_plan: Callable[[PlanStep, Plan], None] | None = None,
        on_text: Callable[[PlanStep, Plan, Frame], None] | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        gate: SafetyGate | None = None,
    ) -> None:
        self.backend = backend
        self.executor = executor
        self.config = config or LoopConfig()
        self.vocabulary = vocabulary
        self.grounder = grounder
        self.objects = objects
        self.ground_truth = ground_truth
        self.on_plan = on_plan  # after parse + ground, before execution (the ROS node publishes here)
        self.on_text = on_text  # the step's sentence, before its subgoal image is decoded (streaming backends); the plan before it
        self.on_step = on_step  # after the step's outcome is known
        self.should_stop = should_stop or (lambda: False)
        self.gate = gate  # planner/safety.py: the last check before a goal can reach the executor
        self._seen: tuple[float, ObjectsInView | None] | None = None  # (frame stamp, detection) of the last planned frame
        # Validates the instruction (empty, words the model cannot encode): SessionError / BackendError.
        self.session = GuidanceSession(backend, instruction, self.config.decode,
                                       max_steps=self.config.monitor.max_planning_calls)
        self._post: tuple[Frame, Any] | None = None  # (post-step frame, the model's Perceived of it): reused once
        mc = self.config.monitor
        verifier = FrameVerifier(self._perceive if self.session.perceives else None, mc.progress_threshold,
                                 mc.change_threshold, check=self._check if self.session.checks else None)
        self.monitor = ExecutionMonitor(executor, mc, verifier=verifier)
        self.plan = Plan(instruction=self.session.instruction, model_id=str(getattr(backend, "model_id", "")))
        self.context = ParseContext()
        self.naming: NameGrounding | None = None
        self.records: list[StepRecord] = []
        self.replans = self.retries = 0

    # -- the loop ---------------------------------------------------------------------------
    def run(self, first_frame: Frame | None = None) -> LoopResult:
        t_start = time.perf_counter()
        frame: Frame | None = None
        status, reason = PlanStatus.FAILED, ""
        replans_this_step = 0
        self.monitor.record("start", 0, "guidance started", instruction=self.session.instruction)
        try:
            frame = first_frame if first_frame is not None else self.executor.observe()
            while True:
                if self.should_stop():
                    status, reason = PlanStatus.CANCELED, "stopped (canceled or preempted)"
                    break
                if self.config.horizon is not None and len(self.plan.steps) >= self.config.horizon:
                    status, reason = PlanStatus.SUCCEEDED, f"planned {len(self.plan.steps)} steps ahead (the horizon)"
                    break
                limit = self.monitor.limit_reached()
                if limit:
                    self.monitor.record("limit", len(self.session.history), limit)
                    reason = limit
                    break
                step, rec = self._plan(frame)
                if step.is_final:
                    verdict = self.executor.task_done()
                    if verdict is None or verdict:
                        rec.outcome = "final"
                        rec.reason = ("the model says done and the executor agrees" if verdict else
                                      "the model says done (the executor has no task check)")
                        self.monitor.record("final", rec.index, rec.reason)
                        self._finish_record(rec)
                        status, reason = PlanStatus.SUCCEEDED, "task complete"
                        break
                    rec.outcome = "final_rejected"
                    rec.reason = "the model says done but the executor's task check disagrees"
                    self.monitor.record("replan", rec.index, rec.reason)
                    self._finish_record(rec)
                    self.session.replan()
                    self.replans += 1
                    replans_this_step += 1
                    if replans_this_step > self.config.monitor.max_replans:
                        reason = f"gave up: {rec.reason} ({replans_this_step} re-plans)"
                        break
                    frame = self.executor.observe()  # plan again from the newest frame
                    continue

                outcome = self.monitor.run_step(step, step.goal, frame)
                rec.outcome, rec.reason, rec.attempts = outcome.status, outcome.reason, outcome.attempts
                rec.progress = outcome.progress
                self._record_verification(rec, outcome, outcome.status == "done")
                rec.after = outcome.after.image if self.config.keep_images else None
                self.retries += max(0, outcome.attempts - 1)
                self._finish_record(rec)
                frame = outcome.after
                if outcome.status == "done":
                    self._confirm(step)
                    replans_this_step = 0
                elif outcome.status == "limit":
                    reason = outcome.reason
                    break
                else:
                    self.session.replan()
                    self.replans += 1
                    replans_this_step += 1
                    if replans_this_step > self.config.monitor.max_replans:
                        reason = f"gave up on step {rec.index}: {outcome.reason} ({replans_this_step} re-plans)"
                        self.monitor.record("limit", rec.index, reason)
                        break
                    if outcome.attempts == 0:  # nothing ran: plan again from the newest frame (the world moves on)
                        self._refuse_names(rec)
                        frame = self.executor.observe()
        except (BackendError, SessionError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.monitor.record("error", len(self.session.history), reason)
        except ExecutorError as exc:  # no camera frame in time, the bag ended, a broken executor
            if self.should_stop():
                status, reason = PlanStatus.CANCELED, "stopped (canceled or preempted)"
            else:
                reason = f"executor: {exc}"
                self.monitor.record("error", len(self.session.history), reason)
        self.plan.status = status
        self.plan.error = "" if status == PlanStatus.SUCCEEDED else reason
        return LoopResult(
            status=status, stop_reason=reason, plan=self.plan, records=self.records,
            events=self.monitor.events_json(), replans=self.replans, retries=self.retries,
            planning_calls=self.monitor.planning_calls, attempts=self.monitor.attempts,
            wall_s=time.perf_counter() - t_start, final_frame=frame,
        )

    # -- one planning call: model step, parse, ground -------------------------------------------
    def _plan(self, frame: Frame) -> tuple[PlanStep, StepRecord]:
        index = len(self.session.history)
        gt_k = self.ground_truth.steps_done() if self.ground_truth is not None else None
        gt = self.ground_truth.step(gt_k) if self.ground_truth is not None else None
        self.monitor.planning_calls += 1
        frame_in = self._model_input(frame)
        post, self._post = self._post, None
        given = post[1].text if post is not None and post[0] is frame and post[1].perception is not None else None
        others = post[1].perception.get("other_names", {}) if given is not None else {}  # type: ignore[union-attr]
        allowed, known, detect_ms, given = self._allowed_names(frame, frame_in, index, given, others)
        reused = given is not None and post is not None and post[0] is frame and given == post[1].text
        on_text = (lambda partial: self.on_text(partial, self.plan, frame)) if self.on_text is not None else None  # noqa: E731
        step = self.session.next_step(frame_in, allowed_names=allowed, known_names=known, perception=given,
                                      on_text=on_text)
        t_plan = time.perf_counter()
        latency = dict(step.timings_ms)
        if reused:  # the perception was decoded when verifying the previous step
            latency["perceive_reused"] = post[1].timings_ms.get("total", 0.0)  # type: ignore[union-attr]
        if allowed is not None:  # detection (or the model's perception) is part of planning this step
            latency["detect" if self.objects is not None and self.config.grounded_decoding else "perceive"] = detect_ms
            latency["total"] = latency.get("total", 0.0) + detect_ms
        self.monitor.record("plan", index, "backend answered", text=step.text, is_final=step.is_final,
                            latency_ms=latency.get("total"))
        keep = self.config.keep_images
        rec = StepRecord(
            call=self.monitor.planning_calls, index=index, gt_index=gt_k, text=step.text,
            gt_text=gt.text if gt else None, goal={}, gt_goal=gt.goal.to_dict() if gt and gt.goal else None,
            outcome="", reason="", attempts=0, latency_ms=latency,
            before=frame.image if keep else None, subgoal=step.subgoal_image if keep else None,
            allowed_names=allowed, perception=step.perception, perception_reused=reused,
        )
        rec.gt_perception = self._true_perception()
        rec.perception_match = perception_match(step.perception, rec.gt_perception)
        if step.is_final:
            rec.text_exact = rec.goal_correct = (gt is None) if self.ground_truth is not None else None
            rec.latency_ms["planner"] = 0.0
            step.goal = None
        else:
            step.goal = self._goal(step, frame, rec, index)
            rec.latency_ms["planner"] = (time.perf_counter() - t_plan) * 1e3
            # Check step, safety gate: a goal it rejects comes back UNKNOWN with "safety gate: <why>",
            # so the monitor never executes it and the step is planned again (on_plan shows why).
            if self.gate is not None:
                self._check_gate(step.goal, frame, rec, index)
            rec.goal = step.goal.to_dict()
            if gt is not None:
                self._evaluate(rec, step, gt, gt_k)
        self.plan.steps.append(step)
        self.plan.stamp, self.plan.frame_id = frame.stamp, frame.frame_id
        if self.on_plan is not None:
            self.on_plan(step, self.plan)
        return step, rec

    def _allowed_names(self, frame: Frame, frame_in: Frame, index: int, given: str | None, others: dict,
                       ) -> tuple[list[str] | None, tuple[str, ...] | None, float, str | None]:
        """(the names the step may use or None, every name known, detection ms, the perception the
        answer starts with). By the detector (grounded decoding); else, for a model with a scene
        perceiver, by what the model perceives, with the object in the gripper since a confirmed pick
        added and those put away removed (NameGrounding), so a held object the frame hides stays nameable.
        ``others``: the perceiver's next likeliest names per object of ``given`` (a refused name's
        object is offered under one of them)."""
        names = self.session.perceived_names
        if self.config.grounded_decoding and self.objects is not None:
            t0 = time.perf_counter()
            seen = self.objects.objects_for(frame)
            source = "the detector sees"
        elif names:
            t0 = time.perf_counter()
            perceived = self.session.perceive(frame_in) if given is None else None
            if perceived is not None:
                given, others = perceived.text, (perceived.perception or {}).get("other_names", {})
            view = parse_perception(given)
            held = [view["holding"]] if view["holding"] else []
            seen = ObjectsInView(frame.stamp, names, tuple(dict.fromkeys(
                n for n in [o["name"] for o in view["objects"]] + held if n in names)))
            source = "the model perceives"
        else:
            return None, None, 0.0, given
        detect_ms = (time.perf_counter() - t0) * 1e3
        self._seen = (frame.stamp, seen)
        if seen is None:
            self.monitor.record("ground", index, "no detection for this frame: the step is planned free")
            return None, None, detect_ms, given
        if self.naming is None:
            targets = self.vocabulary.targets if self.vocabulary is not None else ()
            self.naming = NameGrounding(seen.known, targets)
        elif set(seen.known) != set(self.naming.known):
            self.naming = dataclasses.replace(self.naming, known=tuple(seen.known))
        allowed = self.naming.allowed(seen.names, others)
        instead = sorted(set(allowed) - set(seen.names) - {self.naming.held, *self.naming.targets})
        self.monitor.record("ground", index, f"the model may name the objects {source} that were not put away",
                            seen=sorted(seen.names), put_away=sorted(self.naming.put_away),
                            **({"read_otherwise": instead} if instead else {}))
        return allowed, self.naming.known, detect_ms, given

    def _goal(self, step: PlanStep, frame: Frame, rec: StepRecord, index: int) -> ActionGoal:
        """The step's ActionGoal: the sentence parsed in context and grounded in the frame."""
        parsed = parse(step.text, self.vocabulary, self.context)
        goal = parsed.to_goal(step_index=index, stamp=frame.stamp)
        if self.grounder is not None and parsed.status == GoalStatus.OK and parsed.verb != "done":
            goal, info = self.grounder.ground(parsed, goal, frame, step.subgoal_image)
            rec.grounding = info.to_dict()
            if goal.verb == "pick" and self.ground_truth is not None:  # a resting object: its true position is defined
                rec.grounding_error_m = self.ground_truth.grounding_error_m(goal.object, info)
        if parsed.verb == "done" and parsed.status == GoalStatus.OK:
            goal = ActionGoal("done", "", step_index=index, status=GoalStatus.UNKNOWN,
                              reason="the sentence says done but the model did not mark the step final")
        if (goal.status == GoalStatus.OK and goal.verb in PICK_VERBS and self.naming is not None
                and goal.object in self.naming.put_away):  # a block stacked stays nameable as a target, not to take
            goal.status = GoalStatus.UNKNOWN
            goal.reason = f"the {goal.object} was put away by a confirmed step: picking it up would undo that step"
        goal.step_index, goal.stamp = index, frame.stamp
        if not goal.goal_id:
            goal.goal_id = uuid.uuid4().hex
        if goal.status != GoalStatus.OK and not goal.reason:
            goal.reason = f"planner status {goal.status.value}"
        self.monitor.record("parse", index, parsed.reason or "parsed", goal=goal.to_dict())
        return goal

    def _evaluate(self, rec: StepRecord, step: PlanStep, gt: PlanStep, gt_k: int) -> None:
        """Evaluation only: the step against the simulator's plan (never used to decide)."""
        assert self.ground_truth is not None and step.goal is not None
        rec.text_exact = step.text.strip().lower() == gt.text.strip().lower()
        rec.goal_correct = step.goal.status == GoalStatus.OK and _goal_key(step.goal) == _goal_key(gt.goal)
        gt_image = self.ground_truth.image(gt_k)
        if step.subgoal_image is not None and gt_image is not None:
            rec.subgoal_psnr = capped_psnr(step.subgoal_image, gt_image)
            try:
                rec.subgoal_pos_error_px, rec.subgoal_pos_error_m = subgoal_position_error(
                    step.subgoal_image, gt_image, self.ground_truth.camera)
            except ValueError as exc:  # a metric never ends a run (e.g. a blob above the camera's horizon)
                self.monitor.record("metric", rec.index, f"subgoal position error not computed: {exc}")

    def _check_gate(self, goal: ActionGoal, frame: Frame, rec: StepRecord, index: int) -> None:
        """Run the safety gate on ``goal`` (marks it UNKNOWN when rejected) and record the decision."""
        assert self.gate is not None
        if self._seen is not None and self._seen[0] == frame.stamp:  # grounded decoding already asked the detector
            seen = self._seen[1]
        else:
            seen = self.objects.objects_for(frame) if self.objects is not None else None
            self._seen = (frame.stamp, seen)
        info = rec.grounding  # the planner's own perception: what the grounder located in this frame
        perceived = [n for n, key in ((goal.object, "object_pixel"), (goal.target or "", "target_pixel")) if n and info.get(key)]
        held = self.context.held_object
        if held and goal.object.lower().strip() == held.lower().strip():
            perceived.append(goal.object)  # in the gripper since a confirmed pick (the gripper often hides it)
        v = self.vocabulary  # a configured object list is no evidence of presence: only a scene's counts
        scene = (*(v.objects if v.objects_present else ()), *v.targets) if v is not None else ()
        t0 = time.perf_counter()
        decision = self.gate.check(goal, seen.names if seen is not None else None, perceived, scene, self.should_stop)
        rec.latency_ms["gate"] = (time.perf_counter() - t0) * 1e3
        if decision.kind:  # a goal that was ok and the gate rejected
            self.monitor.record("gate", index, goal.reason, check=decision.kind, goal=goal.to_dict())
        elif decision.ok:
            self.monitor.record("gate", index, "passed the safety gate", held_s=round(decision.held_s, 4))

    # -- verify: the model's perception of a post-step frame ---------------------------------------
    def _perceive(self, frame: Frame) -> Any:
        """The model's perception of ``frame`` (a post-step frame) with the confirmed steps as history;
        kept so the next planning call on this frame starts its answer with it (decoded once)."""
        seen = self.session.perceive(self._model_input(frame))
        self._post = (frame, seen)
        return seen

    def _check(self, before: Frame, after: Frame, step_text: str) -> Any:
        """The model's step verifier on the step's two frames (model_runtime/step_verifier.py)."""
        return self.session.check(self._model_input(before), self._model_input(after), step_text)

    def _model_input(self, frame: Frame) -> Frame:
        """``frame`` at the model's input size (``LoopConfig.frame_size``, else the backend's)."""
        size = self.config.frame_size or getattr(self.backend, "image_size", None)
        return resize_frame(frame, (int(size[0]), int(size[1]))) if size else frame

    def _true_perception(self) -> dict[str, Any] | None:
        """Evaluation only: what the current frame truly shows (the GroundTruth's optional ``perception``)."""
        truth = getattr(self.ground_truth, "perception", None)
        return truth() if truth is not None else None

    def _record_verification(self, rec: StepRecord, outcome: StepOutcome, done: bool) -> None:
        verdict = outcome.verdict
        if verdict is None:  # nothing was executed
            return
        gt_after = self._true_perception()
        rec.verification = {
            "done": done, "decided_by": outcome.decided_by, "reason": rec.reason, "frames": verdict.to_dict(),
            # the executor's own report on the last attempt (a simulator: its check at the skill's end),
            # which the frames-only loop does not decide by: how often the frames agree is measured by it
            "executor_success": outcome.results[-1].success if outcome.results else None,
            "gt_after": gt_after, "after_match": perception_match(verdict.perception, gt_after),
        }
        if verdict.perceive_ms is not None or verdict.check_ms is not None:
            rec.latency_ms["verify"] = (verdict.perceive_ms or 0.0) + (verdict.check_ms or 0.0)

    # -- bookkeeping ------------------------------------------------------------------------------
    def _confirm(self, step: PlanStep) -> None:
        """The step is done: it joins the history; parse context and name grounding follow it."""
        goal = step.goal
        self.session.mark_done(step)
        if goal is None:
            return
        self.context.last_object = goal.object
        if goal.verb == "pick":
            self.context.held_object = goal.object
        elif goal.verb in ("place", "stack"):
            self.context.held_object = None
        if self.naming is not None:
            self.naming.confirm(goal)

    def _refuse_names(self, rec: StepRecord) -> None:
        """Nothing ran and the step's goal has no object (its object phrase named nothing in the scene,
        "no object matching", or the sentence was no single action; a wrong destination keeps the
        object): with name grounding, the names it mentions are not offered again for this step."""
        if self.naming is None or not rec.allowed_names or rec.goal.get("object"):
            return
        named = self.naming.refuse(rec.text, rec.allowed_names)
        if named:
            self.monitor.record("ground", rec.index, "no goal from these names: the re-plan names another object",
                                refused=named)

    def _finish_record(self, rec: StepRecord) -> None:
        self.records.append(rec)
        if self.on_step is not None:
            self.on_step(rec)
