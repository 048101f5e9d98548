"""Guided episodes in simulation: the one step loop (``planner.loop``) on a sim env.

``run_episode(env, backend, seed)`` resets the env, plugs the sim into the loop (the skill
controller and its checker as the executor, the task's detector for grounding and grounded
decoding, the ground-truth plan for evaluation only) and scores the episode against the
simulator's ground truth, which the loop itself never reads to decide (only the oracle backend
does, by design).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu_guide.types import DecodeMode, Frame, PlanStatus, PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions, GuidanceBackend
from model_runtime.session import SessionError
from planner.executor import Executor, SimExecutor
from planner.grounded import ObjectsInView
from planner.grounding import ColorShapeDetector, Detector, Grounder, GroundingInfo
from planner.loop import GuidanceLoop, LoopConfig, StepRecord
from planner.monitor import MonitorConfig, _jsonable
from planner.parse import Vocabulary
from planner.safety import SafetyConfig, SafetyGate

__all__ = ["EpisodeResult", "RunnerConfig", "StepRecord", "run_episode"]


@dataclass
class RunnerConfig:
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    ground: bool = True  # run the detector (target poses, ordinals, sentence/subgoal cross-check)
    strict_grounding: bool = False  # an object not found -> UNGROUNDED (robots); the sim acts by name
    # Grounded decoding: before each planning call the detector lists the objects it sees, and the
    # model may name only those not yet put away by a confirmed step (plus the held object and the
    # targets that are objects too; planner/grounded.py). Needs ground=True and a detector for the
    # task (none for FoldCloth's cloth parts: then it is off, and the events say so).
    grounded_decoding: bool = False
    use_checker: bool = True  # False: steps judged by frame vs predicted subgoal only, as on a robot
    keep_images: bool = True  # keep before/subgoal/after images per step (reports need them)
    instruction: str | None = None  # the user's words for the task; None: the episode's own instruction
    # The safety gate in the loop's check step (planner/safety.py), as on a robot; None: no gate.
    # In the sim the task's detector and Vocabulary ground the names a goal may act on.
    gate: SafetyConfig | None = None


@dataclass
class EpisodeResult:
    task: str
    seed: int
    backend: str
    model_id: str
    decode_mode: str
    instruction: str
    success: bool  # scored by the simulator after the run
    num_gt_steps: int
    completed_steps: int  # consecutive ground-truth steps done from the start (CALVIN-style)
    all_steps_correct: bool  # success with every step right the first time (no retry, no re-plan)
    replans: int
    retries: int
    planning_calls: int
    attempts: int
    stop_reason: str
    wall_s: float
    status: str = ""  # what the loop concluded (succeeded | failed | canceled), before scoring
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


class SimGroundTruth:
    """The simulator's plan from the reset state: evaluation only (``planner.loop.GroundTruth``).

    An environment without a ground-truth plan (the optional members of emu_guide/env_protocol.py)
    gets no step metrics; its episodes are still scored by ``task_success()`` when it has one."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.has_plan = all(hasattr(sim, m) for m in ("ground_truth_plan", "subgoal_images", "steps_done"))
        self.plan: list[PlanStep] = list(sim.ground_truth_plan()) if self.has_plan else []
        self.images = list(sim.subgoal_images()) if self.has_plan else []
        self.camera = getattr(sim, "camera", None)

    def steps_done(self) -> int:
        return int(self.sim.steps_done()) if self.has_plan else 0

    def step(self, k: int) -> PlanStep | None:
        return self.plan[k] if k < len(self.plan) else None

    def image(self, k: int) -> np.ndarray | None:
        return self.images[k] if k < len(self.images) else None

    def perception(self) -> dict[str, Any] | None:
        """What the camera frame truly shows now, as "perceive" answers list it (``sim_envs.perception``
        in ``model_runtime.prompt``'s reading order); None for an env without object state."""
        if self.camera is None or not hasattr(self.sim, "privileged_state"):
            return None
        from model_runtime.prompt import perception_in_reading_order
        from sim_envs.perception import visible_objects

        seen = visible_objects(self.sim)
        return perception_in_reading_order(seen["objects"], seen["holding"], self.camera.width, self.camera.height)

    def grounding_error_m(self, name: str, info: GroundingInfo) -> float | None:
        """Distance (x, y) between the grounded and the true object position."""
        if info.object_world is None or not hasattr(self.sim, "privileged_state"):
            return None
        obj = self.sim.privileged_state().get("objects", {}).get(name)
        if obj is None or "position" not in obj:
            return None
        return float(np.hypot(info.object_world[0] - obj["position"][0], info.object_world[1] - obj["position"][1]))


class DetectorObjects:
    """The sim detector as the loop's ObjectsSource: the names it finds in each frame."""

    def __init__(self, detector: Detector, vocabulary: Vocabulary) -> None:
        self.detector = detector
        self.vocabulary = vocabulary

    def objects_for(self, frame: Frame) -> ObjectsInView:
        seen = sorted({d.name for d in self.detector.detect(frame.image, self.vocabulary.objects)})
        return ObjectsInView(frame.stamp, tuple(self.vocabulary.known_objects), tuple(seen))


def run_episode(
    env: Any,
    backend: GuidanceBackend,
    seed: int,
    config: RunnerConfig | None = None,
    executor: Executor | None = None,
    detector: Detector | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> EpisodeResult:
    """Reset ``env`` with ``seed`` and guide one episode through the loop to success or a limit."""
    from emu_guide.env_protocol import guidance_env

    config = config or RunnerConfig()
    env.reset(seed=seed)
    sim = guidance_env(env)  # the env, a wrapper or env.unwrapped (EnvProtocolError names what is missing)
    if hasattr(backend, "reset"):
        backend.reset()  # type: ignore[attr-defined]
    truth = SimGroundTruth(sim)
    task_name = str(getattr(sim, "task_name", type(sim).__name__))
    executor = executor or SimExecutor(env, use_checker=config.use_checker)
    vocab = Vocabulary.from_env(env)
    grounder, objects, notes = None, None, []
    if config.ground:
        try:
            detector = detector or ColorShapeDetector.for_env(env)
        except ValueError as exc:  # a task whose objects this detector cannot see (cloth parts)
            notes.append(f"grounding off: {exc}")
        else:
            if getattr(sim, "camera", None) is None:
                notes.append("grounding off: the environment has no camera model")
            else:
                grounder = Grounder(detector, sim.camera, strict=config.strict_grounding, target_names=vocab.targets)
                objects = DetectorObjects(detector, vocab)
    if not truth.has_plan:
        notes.append("no ground-truth plan: step metrics off (success from task_success())")
    if config.grounded_decoding and objects is None:
        notes.append("grounded decoding off: no detector for this task")
    loop_config = LoopConfig(decode=config.decode, monitor=config.monitor,
                             grounded_decoding=config.grounded_decoding, keep_images=config.keep_images)
    try:
        loop = GuidanceLoop(backend, config.instruction or sim.instruction, executor, loop_config, vocabulary=vocab, grounder=grounder,
                            objects=objects, ground_truth=truth, on_step=on_step,
                            gate=SafetyGate(config.gate) if config.gate is not None else None)
    except (BackendError, SessionError) as exc:  # e.g. words the model's vocabulary lacks
        reason = f"session refused the instruction: {exc}"
        return EpisodeResult(
            task=task_name, seed=seed, backend=backend.name, model_id=backend.model_id,
            decode_mode=_mode_of(backend, config), instruction=config.instruction or sim.instruction, success=False,
            num_gt_steps=len(truth.plan), completed_steps=truth.steps_done(), all_steps_correct=False,
            replans=0, retries=0, planning_calls=0, attempts=0, stop_reason=reason, wall_s=0.0,
            status=PlanStatus.FAILED.value, events=[{"t": 0.0, "kind": "error", "step": 0, "why": reason, "data": {}}],
        )
    for note in notes:
        loop.monitor.record("ground", 0, note)
    result = loop.run()
    # Scored by the simulator's task check; an env without one: by what the loop concluded.
    success = bool(sim.task_success()) if hasattr(sim, "task_success") else result.status == PlanStatus.SUCCEEDED
    records = result.records
    first_time = all(r.outcome in ("done", "final") and r.attempts <= 1 for r in records)
    all_correct = bool(success and result.replans == 0 and first_time and all(r.goal_correct for r in records))
    stop_reason = result.stop_reason
    if result.status == PlanStatus.SUCCEEDED and not success:  # the model said done; the simulator disagrees
        stop_reason = f"backend said done after {truth.steps_done()}/{len(truth.plan)} steps"
    return EpisodeResult(
        task=task_name, seed=seed, backend=backend.name, model_id=backend.model_id,
        decode_mode=_mode_of(backend, config, result.plan.steps), instruction=loop.session.instruction, success=success,
        num_gt_steps=len(truth.plan), completed_steps=truth.steps_done(), all_steps_correct=all_correct,
        replans=result.replans, retries=result.retries, planning_calls=result.planning_calls,
        attempts=result.attempts, stop_reason=stop_reason, wall_s=result.wall_s, status=result.status.value,
        steps=records, events=result.events,
        final_frame=result.final_frame.image if (config.keep_images and result.final_frame is not None) else None,
    )


def _mode_of(backend: GuidanceBackend, config: RunnerConfig, steps: list[PlanStep] | None = None) -> str:
    """The decode mode the episode used: the steps' own (the model's default when none was asked)."""
    if backend.name == "oracle":
        return "oracle"
    for step in steps or []:
        if step.decode_mode is not None:
            return DecodeMode.parse(step.decode_mode).value
    return config.decode.mode.value if config.decode.mode is not None else "auto"
