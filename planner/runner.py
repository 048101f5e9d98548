"""Closed-loop episode runner: backend -> parse -> ground -> monitor/executor -> next frame.

One call of ``run_episode`` is one guided episode in simulation. Planning goes through
``model_runtime.session.GuidanceSession`` (instruction + history of done steps + current frame -> next
step): a step the monitor confirms is ``mark_done``; a failed or rejected one is dropped with
``replan`` and the backend is asked again from the new frame.

Metrics per episode (``EpisodeResult``) are computed against the simulator's ground truth, which
the loop itself never reads to make decisions (only the oracle backend does, by design).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu_guide.types import ActionGoal, GoalStatus, PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions, GuidanceBackend
from model_runtime.session import GuidanceSession, SessionError
from planner.executor import Executor, SimExecutor
from planner.grounded import NameGrounding
from planner.grounding import ColorShapeDetector, Detector, Grounder, GroundingInfo
from planner.metrics import capped_psnr, subgoal_position_error
from planner.monitor import ExecutionMonitor, MonitorConfig, _jsonable
from planner.parse import ParseContext, Vocabulary, parse

__all__ = ["EpisodeResult", "RunnerConfig", "StepRecord", "run_episode"]


@dataclass
class RunnerConfig:
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    ground: bool = True  # run the detector (target poses, ordinals, sentence/subgoal cross-check)
    strict_grounding: bool = False  # an object not found -> UNGROUNDED (robots); the sim acts by name
    # Grounded decoding: before each planning call the detector lists the objects it sees, and the
    # model may name only those not yet put away by a confirmed step (plus the held object and the
    # targets that are objects too; planner/grounded.py). Needs ground=True and a detector for the task (none for FoldCloth's cloth parts:
    # then it is off, and the events say so).
    grounded_decoding: bool = False
    use_checker: bool = True  # False: steps judged by frame vs predicted subgoal only, as on a robot
    keep_images: bool = True  # keep before/subgoal/after images per step (reports need them)


@dataclass
class StepRecord:
    """One planning call and what came of it."""

    call: int  # planning call number in the episode
    gt_index: int  # ground-truth step the state was at when planning (steps_done())
    text: str
    gt_text: str | None
    goal: dict[str, Any]
    gt_goal: dict[str, Any] | None
    outcome: str  # done | failed | limit | final | final_rejected | backend_error
    reason: str
    attempts: int
    latency_ms: dict[str, float]  # backend timings + "planner" (parse + ground)
    text_exact: bool | None  # sentence equals the ground-truth sentence
    goal_correct: bool | None  # (verb, object, target) equals the ground-truth goal's
    subgoal_psnr: float | None  # predicted vs ground-truth subgoal image (dB, capped at 100)
    subgoal_pos_error_px: float | None  # acted object's position, predicted vs ground-truth subgoal
    subgoal_pos_error_m: float | None = None  # the same on the table plane, metres
    grounding_error_m: float | None = None  # pick steps: grounded object position vs the simulator's (x, y)
    allowed_names: list[str] | None = None  # grounded decoding: the names this step was allowed (None: free)
    grounding: dict[str, Any] = field(default_factory=dict)
    before: np.ndarray | None = None
    subgoal: np.ndarray | None = None
    after: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("before", "subgoal", "after")}
        return _jsonable(d)


@dataclass
class EpisodeResult:
    task: str
    seed: int
    backend: str
    model_id: str
    decode_mode: str
    instruction: str
    success: bool
    num_gt_steps: int
    completed_steps: int  # consecutive ground-truth steps done from the start (CALVIN-style)
    all_steps_correct: bool  # success with every step right the first time (no retry, no re-plan)
    replans: int
    retries: int
    planning_calls: int
    attempts: int
    stop_reason: str
    wall_s: float
    steps: list[StepRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    final_frame: np.ndarray | None = None

    def step_latencies_ms(self) -> list[float]:
        return [s.latency_ms["total"] for s in self.steps if "total" in s.latency_ms]

    def to_dict(self, with_steps: bool = True) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("steps", "events", "final_frame")}
        if with_steps:
            d["steps"] = [s.to_dict() for s in self.steps]
            d["events"] = self.events
        return _jsonable(d)


def _goal_key(goal: ActionGoal | None) -> tuple[str, str, str | None] | None:
    if goal is None:
        return None
    return goal.verb, goal.object.lower().strip(), (goal.target or None) and goal.target.lower().strip()


def run_episode(
    env: Any,
    backend: GuidanceBackend,
    seed: int,
    config: RunnerConfig | None = None,
    executor: Executor | None = None,
    detector: Detector | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> EpisodeResult:
    """Reset ``env`` with ``seed`` and guide one episode to success or a limit."""
    config = config or RunnerConfig()
    t_start = time.perf_counter()
    env.reset(seed=seed)
    sim = env.unwrapped
    if hasattr(backend, "reset"):
        backend.reset()  # type: ignore[attr-defined]
    gt_plan: list[PlanStep] = list(sim.ground_truth_plan())
    gt_images = list(sim.subgoal_images())
    executor = executor or SimExecutor(env, use_checker=config.use_checker)
    monitor = ExecutionMonitor(executor, config.monitor)
    vocab = Vocabulary.from_env(env)
    grounder = None
    no_detector = ""
    if config.ground:
        try:
            detector = detector or ColorShapeDetector.for_env(env)
        except ValueError as exc:  # a task whose objects this detector cannot see (cloth parts)
            no_detector = str(exc)
        else:
            grounder = Grounder(detector, sim.camera, strict=config.strict_grounding, target_names=vocab.targets)
    ctx = ParseContext()
    naming: NameGrounding | None = None  # grounded decoding: what the next step may name
    records: list[StepRecord] = []
    replans = retries = 0
    replans_this_step = 0
    stop_reason = ""
    success = False
    frame = executor.observe()
    monitor.record("start", 0, "episode reset", seed=seed, instruction=sim.instruction, gt_steps=len(gt_plan))
    if no_detector:
        monitor.record("ground", 0, f"grounding off: {no_detector}")
    if config.grounded_decoding:
        if grounder is None:
            monitor.record("ground", 0, "grounded decoding off: no detector for this task")
        else:
            naming = NameGrounding(vocab.known_objects, vocab.targets)
    try:
        session: GuidanceSession | None = GuidanceSession(backend, sim.instruction, config.decode)
    except (BackendError, SessionError) as exc:  # e.g. words the model's vocabulary lacks
        monitor.record("error", 0, f"session refused the instruction: {exc}")
        stop_reason = f"session refused the instruction: {exc}"
        session = None

    while session is not None:
        limit = monitor.limit_reached()
        if limit:
            monitor.record("limit", len(session.history), limit)
            stop_reason = limit
            break
        k = int(sim.steps_done())
        gt = gt_plan[k] if k < len(gt_plan) else None
        monitor.planning_calls += 1
        allowed, known, detect_ms = None, None, 0.0
        if naming is not None:
            t_det = time.perf_counter()
            seen = sorted({d.name for d in grounder.detector.detect(frame.image, vocab.objects)})
            allowed, known = naming.allowed(seen), naming.known
            detect_ms = (time.perf_counter() - t_det) * 1e3
            monitor.record("ground", k, "the model may name the objects the detector sees that were not put away",
                           seen=seen, put_away=sorted(naming.put_away))
        try:
            step = session.next_step(frame, allowed_names=allowed, known_names=known)
        except (BackendError, SessionError) as exc:
            monitor.record("error", k, f"backend error: {exc}")
            stop_reason = f"backend error: {exc}"
            break
        t_plan = time.perf_counter()
        latency = dict(step.timings_ms)
        if allowed is not None:  # detection is part of planning this step
            latency["detect"] = detect_ms
            latency["total"] = latency.get("total", 0.0) + detect_ms
        monitor.record("plan", k, "backend answered", text=step.text, is_final=step.is_final,
                       latency_ms=latency.get("total"))
        rec = StepRecord(
            call=monitor.planning_calls, gt_index=k, text=step.text, gt_text=gt.text if gt else None,
            goal={}, gt_goal=gt.goal.to_dict() if gt and gt.goal else None, outcome="", reason="", attempts=0,
            latency_ms=latency, text_exact=None, goal_correct=None, subgoal_psnr=None, subgoal_pos_error_px=None,
            before=frame.image if config.keep_images else None,
            subgoal=step.subgoal_image if config.keep_images else None,
            allowed_names=allowed,
        )
        if step.is_final:
            done_now = sim.task_success()
            if done_now or not config.use_checker:
                # Without a checker (robot-like) the backend's word ends the episode; success is
                # still scored by the simulator afterwards.
                rec.outcome = "final"
                rec.reason = ("backend says done and the checker agrees" if config.use_checker else
                              "backend says done (no checker consulted)")
                rec.text_exact = rec.goal_correct = gt is None
                monitor.record("final", k, rec.reason)
                records.append(rec)
                if on_step:
                    on_step(rec)
                success = done_now
                stop_reason = "task complete" if done_now else f"backend said done after {k}/{len(gt_plan)} steps"
                break
            rec.outcome = "final_rejected"
            rec.reason = f"backend says done but only {k}/{len(gt_plan)} steps are"
            rec.text_exact = rec.goal_correct = False
            rec.latency_ms["planner"] = 0.0
            monitor.record("replan", k, rec.reason)
            records.append(rec)
            if on_step:
                on_step(rec)
            session.replan()
            replans += 1
            replans_this_step += 1
            if replans_this_step > config.monitor.max_replans:
                stop_reason = f"gave up: {rec.reason} ({replans_this_step} re-plans)"
                break
            continue

        # Parse and ground.
        parsed = parse(step.text, vocab, ctx)
        goal = parsed.to_goal(step_index=k, stamp=frame.stamp)
        info: GroundingInfo | None = None
        if grounder is not None and parsed.status == GoalStatus.OK and parsed.verb != "done":
            goal, info = grounder.ground(parsed, goal, frame, step.subgoal_image)
            rec.grounding = info.to_dict()
            if goal.verb == "pick":  # a resting object: its true position is well defined
                rec.grounding_error_m = _grounding_error(sim, goal.object, info)
        if parsed.verb == "done" and parsed.status == GoalStatus.OK:
            goal = ActionGoal("done", "", step_index=k, status=GoalStatus.UNKNOWN,
                              reason="the sentence says done but the backend did not mark the step final")
        rec.latency_ms["planner"] = (time.perf_counter() - t_plan) * 1e3
        monitor.record("parse", k, parsed.reason or "parsed", goal=goal.to_dict())
        rec.goal = goal.to_dict()
        if gt is not None:
            rec.text_exact = step.text.strip().lower() == gt.text.strip().lower()
            rec.goal_correct = goal.status == GoalStatus.OK and _goal_key(goal) == _goal_key(gt.goal)
            if step.subgoal_image is not None and k < len(gt_images):
                rec.subgoal_psnr = capped_psnr(step.subgoal_image, gt_images[k])
                rec.subgoal_pos_error_px, rec.subgoal_pos_error_m = subgoal_position_error(
                    step.subgoal_image, gt_images[k], sim.camera)

        outcome = monitor.run_step(step, goal, frame)
        rec.outcome, rec.reason, rec.attempts = outcome.status, outcome.reason, outcome.attempts
        rec.after = outcome.after.image if config.keep_images else None
        retries += max(0, outcome.attempts - 1)
        records.append(rec)
        if on_step:
            on_step(rec)
        frame = outcome.after
        if outcome.status == "done":
            step.goal = goal  # the grounded goal that was executed
            session.mark_done(step)
            ctx.last_object = goal.object
            if goal.verb == "pick":
                ctx.held_object = goal.object
            elif goal.verb in ("place", "stack"):
                ctx.held_object = None
            if naming is not None:
                naming.confirm(goal)
            replans_this_step = 0
        elif outcome.status == "limit":
            stop_reason = outcome.reason
            break
        else:
            session.replan()
            replans += 1
            replans_this_step += 1
            if replans_this_step > config.monitor.max_replans:
                stop_reason = f"gave up on step {k}: {outcome.reason} ({replans_this_step} re-plans)"
                monitor.record("limit", k, stop_reason)
                break

    completed = int(sim.steps_done())
    first_time = all(r.outcome in ("done", "final") and r.attempts <= 1 for r in records)
    all_correct = bool(success and replans == 0 and first_time and all(r.goal_correct for r in records))
    return EpisodeResult(
        task=sim.task_name, seed=seed, backend=backend.name, model_id=backend.model_id,
        decode_mode=_mode_of(backend, config), instruction=sim.instruction, success=success, num_gt_steps=len(gt_plan),
        completed_steps=completed, all_steps_correct=all_correct, replans=replans, retries=retries,
        planning_calls=monitor.planning_calls, attempts=monitor.attempts, stop_reason=stop_reason,
        wall_s=time.perf_counter() - t_start, steps=records, events=monitor.events_json(),
        final_frame=frame.image if config.keep_images else None,
    )


def _mode_of(backend: GuidanceBackend, config: RunnerConfig) -> str:
    return "oracle" if backend.name == "oracle" else config.decode.mode.value


def _grounding_error(sim: Any, name: str, info: GroundingInfo) -> float | None:
    """Evaluation only: distance (x, y) between the grounded and the true object position."""
    if info.object_world is None:
        return None
    obj = sim.privileged_state().get("objects", {}).get(name)
    if obj is None or "position" not in obj:
        return None
    return float(np.hypot(info.object_world[0] - obj["position"][0], info.object_world[1] - obj["position"][1]))
