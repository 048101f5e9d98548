"""The guidance node: camera frames + an instruction -> streamed plan steps and action goals.

Graph (names are parameters; defaults shown):

- subscribes ``image_raw`` (sensor_msgs/Image) and ``image_raw/compressed``
  (sensor_msgs/CompressedImage) with sensor-data QoS; keeps only the latest valid frame;
- subscribes ``step_result`` (emu_guidance/StepResult) from the executor (robot or sim bridge);
- subscribes ``objects_in_view`` (emu_guidance/ObjectsInView) from a detector: a step planned from
  a frame with a detection of the same stamp (within ``max_objects_age_s``) may name only the
  objects seen (grounded decoding, docs/planner.md); without one it is planned free and counted;
- serves the ``guide`` action (emu_guidance/action/Guide): feedback per produced step, cancel and
  preemption (a newer goal ends the running one), result = the whole plan and a status;
- publishes ``plan`` (emu_guidance/Plan, after every step) and ``action_goal``
  (emu_guidance/ActionGoal, one per step), and ``~/frame_stats`` (std_msgs/String, JSON counters).

Threads: subscriptions and timers run in one mutually-exclusive callback group and only convert
and store frames; the action server runs in its own reentrant group, where the backend is called
(under a lock: backends are not thread-safe). A MultiThreadedExecutor runs both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from emu_guide.optional import require
from emu_guide.types import ActionGoal, DecodeMode, Frame, GoalStatus, PlanStatus, StepResult
from emu_ros import convert
from model_runtime.backends.base import BACKENDS, BackendError, DecodeOptions
from planner.executor import ExecutorError, PlanAheadExecutor
from planner.grounded import ObjectsInView
from planner.loop import GuidanceLoop, LoopConfig
from planner.monitor import MonitorConfig

# --- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    default: Any
    description: str
    read_only: bool = False  # topics: fixed once the node has created its endpoints


PARAMETERS: dict[str, ParamSpec] = {
    # topics and names (read-only: endpoints are created once)
    "image_topic": ParamSpec("image_raw", "sensor_msgs/Image input (rgb8, bgr8, rgba8, bgra8, mono8, mono16)", True),
    "compressed_topic": ParamSpec("image_raw/compressed", "sensor_msgs/CompressedImage input (JPEG, PNG); '' disables", True),
    "plan_topic": ParamSpec("plan", "emu_guidance/Plan output (the plan so far, after every step)", True),
    "action_goal_topic": ParamSpec("action_goal", "emu_guidance/ActionGoal output (one per step)", True),
    "step_result_topic": ParamSpec("step_result", "emu_guidance/StepResult input from the executor", True),
    "objects_topic": ParamSpec("objects_in_view", "emu_guidance/ObjectsInView input (a detector's names per frame): grounded decoding; '' disables", True),
    "action_name": ParamSpec("guide", "name of the emu_guidance/action/Guide server", True),
    # model
    "backend": ParamSpec("torch", f"guidance backend: one of {sorted(BACKENDS)}; a change reloads it"),
    "model_path": ParamSpec("", "model directory for torch/emu3/vllm ('' = the shipped default model)"),
    "trust_remote_code": ParamSpec(False, "run the checkpoint's own tokenizer code (the official Emu3.5 release); only for checkpoints you trust"),
    "device": ParamSpec("cpu", "torch device for model backends: cpu, cuda, cuda:N"),
    "sim_env_id": ParamSpec("", "oracle backend only: the sim_envs env id it reads privileged state from"),
    "sim_seed": ParamSpec(0, "oracle backend only: reset seed (must equal the sim bridge's)"),
    # decoding
    "decode_mode": ParamSpec("", "subgoal image decoding: dida, ar or oracle; '' = the model's own (DiDA when DiDA-adapted, else AR)"),
    "decode_steps": ParamSpec(8, "DiDA parallel refinement steps (>= 1)"),
    "guidance_scale": ParamSpec(1.0, "classifier-free guidance on image tokens (>= 0; 1 = off)"),
    "seed": ParamSpec(0, "sampling seed (>= 0)"),
    "image_height": ParamSpec(0, "frames are resized to this height before the backend (0 = the backend's size; needs image_width too)"),
    "image_width": ParamSpec(0, "frames are resized to this width before the backend (0 = the backend's size; needs image_height too)"),
    # loop and rates
    "max_steps": ParamSpec(20, "default step budget of a goal (>= 1)"),
    "replan_rate_hz": ParamSpec(2.0, "continuous mode: at most this many plan steps per second (> 0)"),
    "wait_for_step_result": ParamSpec(True, "continuous mode: wait for the executor's StepResult before the next step"),
    "executor_knows_task_done": ParamSpec(False, "continuous mode: the executor's StepResult.task_done is authoritative (the sim bridge's is): the model's final 'done' is rejected and re-planned while the last StepResult says the task is not complete"),
    "step_result_timeout_s": ParamSpec(60.0, "continuous mode: how long to wait for a StepResult (> 0)"),
    "frame_timeout_s": ParamSpec(5.0, "how long a goal waits for a fresh camera frame (> 0)"),
    "max_frame_age_s": ParamSpec(0.0, "frames older than this (receive time) are not planned from (0 = no limit)"),
    "max_objects_age_s": ParamSpec(0.5, "an ObjectsInView grounds a frame's step when their stamps differ by at most this; else the step is planned free (> 0)"),
    "stats_rate_hz": ParamSpec(1.0, "rate of ~/frame_stats messages (> 0)"),
    "plan_images": ParamSpec("last", "subgoal images in Plan messages and results: all, last or none (feedback always has its own)"),
}

# Parameters whose change takes effect at the next goal by reloading the backend.
_BACKEND_PARAMS = ("backend", "model_path", "device", "sim_env_id", "sim_seed", "trust_remote_code")


def validate_parameter(name: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for ``name``, else the reason (shown to whoever set it)."""
    if name not in PARAMETERS:
        return f"unknown parameter {name!r}"
    default = PARAMETERS[name].default
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{name} must be a bool"
    if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{name} must be an integer, got {value!r}"
    if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{name} must be a number, got {value!r}"
    if isinstance(default, str) and not isinstance(value, str):
        return f"{name} must be a string, got {value!r}"
    checks = {
        "backend": (lambda v: v in BACKENDS, f"must be one of {sorted(BACKENDS)}"),
        "device": (lambda v: v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()), "must be cpu, cuda or cuda:N"),
        "decode_mode": (lambda v: v == "" or v in {m.value for m in DecodeMode}, f"must be '' or one of {[m.value for m in DecodeMode]}"),
        "decode_steps": (lambda v: 1 <= v <= 1024, "must be in [1, 1024]"),
        "guidance_scale": (lambda v: 0.0 <= v <= 100.0, "must be in [0, 100]"),
        "seed": (lambda v: v >= 0, "must be >= 0"),
        "sim_seed": (lambda v: v >= 0, "must be >= 0"),
        "image_height": (lambda v: 0 <= v <= 4096, "must be in [0, 4096]"),
        "image_width": (lambda v: 0 <= v <= 4096, "must be in [0, 4096]"),
        "max_steps": (lambda v: 1 <= v <= 1000, "must be in [1, 1000]"),
        "replan_rate_hz": (lambda v: 0.0 < v <= 1000.0, "must be in (0, 1000]"),
        "step_result_timeout_s": (lambda v: v > 0, "must be > 0"),
        "frame_timeout_s": (lambda v: v > 0, "must be > 0"),
        "max_frame_age_s": (lambda v: v >= 0, "must be >= 0"),
        "max_objects_age_s": (lambda v: v > 0, "must be > 0"),
        "stats_rate_hz": (lambda v: 0.0 < v <= 100.0, "must be in (0, 100]"),
        "plan_images": (lambda v: v in ("all", "last", "none"), "must be all, last or none"),
        "image_topic": (bool, "must not be empty"),
        "plan_topic": (bool, "must not be empty"),
        "action_goal_topic": (bool, "must not be empty"),
        "step_result_topic": (bool, "must not be empty"),
        "action_name": (bool, "must not be empty"),
    }
    if name in checks:
        ok, why = checks[name]
        if not ok(value):
            return f"{name}={value!r} rejected: {why}"
    return None


# --- frame bookkeeping (no rclpy) -------------------------------------------------------------


class LatestFrame:
    """The newest valid frame plus counters; written by subscription callbacks, read by goals."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.frame: Frame | None = None
        self.received_at = 0.0  # monotonic time the latest frame arrived
        self.seq = 0  # increments per valid frame
        self.used_seq = 0  # seq of the last frame a step was planned from
        self.received = 0
        self.rejected = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.dropped = 0  # valid frames overwritten before any step used them
        self.last_error = ""

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self.frame is not None and self.seq != self.used_seq:
                self.dropped += 1
            self.frame = frame
            self.received_at = time.monotonic()
            self.seq += 1
            self.received += 1
            self._cond.notify_all()

    def reject(self, error: Exception) -> None:
        with self._cond:
            self.rejected += 1
            key = str(error).split(";")[0].split(":")[0][:60]
            self.rejected_by_reason[key] = self.rejected_by_reason.get(key, 0) + 1
            self.last_error = str(error)

    def wait_newer(self, after_seq: int, after_time: float, timeout: float, max_age: float, stop: Any) -> tuple[Frame, int] | None:
        """The latest frame with seq > after_seq that arrived after ``after_time``; None on timeout/stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                fresh = max_age <= 0 or now - self.received_at <= max_age
                if self.frame is not None and self.seq > after_seq and self.received_at >= after_time and fresh:
                    self.used_seq = self.seq
                    return self.frame, self.seq
                if now >= deadline or stop():
                    return None
                self._cond.wait(min(0.05, deadline - now))

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "received": self.received,
                "rejected": self.rejected,
                "rejected_by_reason": dict(self.rejected_by_reason),
                "dropped": self.dropped,
                "last_error": self.last_error,
                "latest_stamp": self.frame.stamp if self.frame is not None else None,
            }


class RecentObjects:
    """The last few ObjectsInView messages; a step is grounded by the one taken on (or nearest) its frame."""

    def __init__(self, keep: int = 16) -> None:
        self._lock = threading.Lock()
        self._recent: list[ObjectsInView] = []
        self.keep = keep
        self.received = 0
        self.rejected = 0
        self.last_error = ""
        self.steps_grounded = 0
        self.steps_free = 0  # objects expected (topic set) but none near the frame's stamp

    def put(self, objects: ObjectsInView) -> None:
        with self._lock:
            self._recent = [*self._recent, objects][-self.keep :]
            self.received += 1

    def reject(self, error: Exception) -> None:
        with self._lock:
            self.rejected += 1
            self.last_error = str(error)

    def for_frame(self, stamp: float, max_age: float) -> ObjectsInView | None:
        """The ObjectsInView whose stamp is nearest ``stamp`` if within ``max_age`` s; counts the outcome."""
        with self._lock:
            best = min(self._recent, key=lambda o: abs(o.stamp - stamp), default=None)
            if best is None or abs(best.stamp - stamp) > max_age:
                self.steps_free += 1
                return None
            self.steps_grounded += 1
            return best

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"received": self.received, "rejected": self.rejected, "last_error": self.last_error,
                    "steps_grounded": self.steps_grounded, "steps_free": self.steps_free}  # fmt: skip


# --- executors for the one step loop (no rclpy) ---------------------------------------------------


class StepResults:
    """StepResult messages by goal id, written by the subscription, awaited by the running goal."""

    def __init__(self, keep: int = 256) -> None:
        self._cond = threading.Condition()
        self._results: dict[str, Any] = {}
        self.keep = keep

    def put(self, goal_id: str, result: Any) -> None:
        with self._cond:
            self._results[goal_id] = result
            while len(self._results) > self.keep:  # results for goals nobody waits on (other clients): bounded
                self._results.pop(next(iter(self._results)))
            self._cond.notify_all()

    def wait(self, goal_id: str, timeout: float, stop: Any) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while goal_id not in self._results:
                if time.monotonic() >= deadline or stop():
                    return None
                self._cond.wait(0.05)
            return self._results.pop(goal_id)


class RobotExecutor:
    """The robot as the loop's executor: ActionGoal out, the robot's StepResult in, camera frames.

    ``execute`` publishes the goal and (``wait_for_result``) waits for the StepResult with its
    goal id; without waiting the goal counts as sent and the new frame alone decides (frame vs
    predicted subgoal). ``check`` is the robot's word on a goal it reported on, else None.
    ``observe`` waits for a camera frame newer than the last step (at most ``rate_hz`` steps/s).
    """

    name = "robot"

    def __init__(self, publish_goal: Any, results: StepResults, frames: LatestFrame, stop: Any, *,
                 wait_for_result: bool, result_timeout_s: float, frame_timeout_s: float, max_frame_age_s: float,
                 rate_hz: float, on_success: Any = None, fixed_frame: Frame | None = None,
                 knows_task_done: bool = False) -> None:
        self.publish_goal = publish_goal
        self.results, self.frames, self.stop = results, frames, stop
        self.wait_for_result, self.result_timeout_s = wait_for_result, result_timeout_s
        self.frame_timeout_s, self.max_frame_age_s = frame_timeout_s, max_frame_age_s
        self.min_period = 1.0 / rate_hz
        self.on_success = on_success  # the oracle's sim mirror follows the robot
        self.fixed_frame = fixed_frame  # the goal carried its own image: every step is planned from it
        self._reported: dict[str, bool] = {}
        self.knows_task_done = knows_task_done  # StepResult.task_done is authoritative (a simulator's)
        self._task_done: bool | None = None  # the last StepResult's task_done
        self._last_seq, self._last_time = 0, 0.0

    def execute(self, goal: ActionGoal) -> StepResult:
        self.publish_goal(goal)
        self._last_time = time.monotonic()  # the next step needs a frame taken after this point
        if not self.wait_for_result:
            return StepResult(goal.step_index, True, reason="goal sent (no StepResult awaited)")
        msg = self.results.wait(goal.goal_id, self.result_timeout_s, self.stop)
        if msg is None:
            if self.stop():
                raise ExecutorError("stopped while waiting for a StepResult")
            raise ExecutorError(f"no StepResult for goal {goal.goal_id} within step_result_timeout_s={self.result_timeout_s}")
        self._reported[goal.goal_id] = bool(msg.success)
        self._task_done = bool(msg.task_done)
        if msg.success and self.on_success is not None:
            self.on_success(goal)
        self._last_time = time.monotonic()
        return StepResult(goal.step_index, bool(msg.success), reason=msg.reason)

    def check(self, goal: ActionGoal) -> bool | None:
        return self._reported.get(goal.goal_id)

    def task_done(self) -> bool | None:
        """True when the robot said so; False only from an executor that knows (else the model decides)."""
        if self._task_done is None:
            return None
        return self._task_done if self.knows_task_done else (True if self._task_done else None)

    def observe(self) -> Frame:
        if self.fixed_frame is not None:
            return self.fixed_frame
        pause = self.min_period - (time.monotonic() - self._last_time)
        if pause > 0 and self._last_seq:
            time.sleep(pause)
        got = self.frames.wait_newer(self._last_seq, self._last_time, self.frame_timeout_s, self.max_frame_age_s, self.stop)
        if got is None:
            raise ExecutorError(f"no camera frame within frame_timeout_s={self.frame_timeout_s} s")
        frame, self._last_seq = got
        return frame


class PublishingPlanAhead(PlanAheadExecutor):
    """One-shot mode: the whole plan from one view; each goal is published and counted as done."""

    def __init__(self, frame: Frame, publish_goal: Any) -> None:
        super().__init__(frame)
        self.publish_goal = publish_goal

    def execute(self, goal: ActionGoal) -> StepResult:
        self.publish_goal(goal)
        return super().execute(goal)


class DetectorTopic:
    """The ObjectsInView topic as the loop's ObjectsSource (the detection nearest the frame's stamp)."""

    def __init__(self, recent: RecentObjects, max_age_s: float) -> None:
        self.recent, self.max_age_s = recent, max_age_s

    def objects_for(self, frame: Frame) -> ObjectsInView | None:
        return self.recent.for_frame(frame.stamp, self.max_age_s)


# --- the node ---------------------------------------------------------------------------------


def _make_node_class() -> type:
    """Build the Node subclass on first use, so importing this module needs no rclpy."""
    rclpy = require("rclpy")
    from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
    from rclpy.action import ActionServer, CancelResponse, GoalResponse
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    require("emu_guidance")  # the generated interfaces (colcon build / scripts/ros_venv.sh)
    from emu_guidance.action import Guide
    from emu_guidance.msg import ActionGoal as ActionGoalMsg
    from emu_guidance.msg import ObjectsInView as ObjectsInViewMsg
    from emu_guidance.msg import Plan as PlanMsg
    from emu_guidance.msg import StepResult as StepResultMsg

    del rclpy

    class GuidanceNode(Node):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__("emu_guidance", **kwargs)
            for name, spec in PARAMETERS.items():
                self.declare_parameter(name, spec.default, ParameterDescriptor(description=spec.description, read_only=spec.read_only))
            for name in PARAMETERS:  # initial values (from YAML / command line) are validated too
                error = validate_parameter(name, self.get_parameter(name).value)
                if error:
                    raise ValueError(f"emu_guidance node: {error}")
            self.add_on_set_parameters_callback(self._on_set_parameters)

            self.factory = convert.rclpy_factory()
            self.frames = LatestFrame()
            self.objects = RecentObjects()
            self._backend: Any = None
            self._backend_key: tuple | None = None
            self._backend_error = ""
            self._sim_env: Any = None
            self._backend_lock = threading.Lock()  # one next_step at a time
            self._goal_lock = threading.Lock()
            self._active_goal: Any = None  # the goal handle being executed
            self._preempted: set[int] = set()  # id() of goal handles a newer goal replaced
            self.results = StepResults()  # goal_id -> StepResult msg
            self.steps_published = 0

            p = self._p
            io_group = MutuallyExclusiveCallbackGroup()
            action_group = ReentrantCallbackGroup()
            self.create_subscription(Image, p("image_topic"), self._on_image, qos_profile_sensor_data, callback_group=io_group)
            if p("compressed_topic"):
                self.create_subscription(CompressedImage, p("compressed_topic"), self._on_compressed, qos_profile_sensor_data, callback_group=io_group)
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(StepResultMsg, p("step_result_topic"), self._on_step_result, reliable, callback_group=io_group)
            if p("objects_topic"):
                self.create_subscription(ObjectsInViewMsg, p("objects_topic"), self._on_objects, reliable, callback_group=io_group)
            self.plan_pub = self.create_publisher(PlanMsg, p("plan_topic"), reliable)
            self.goal_pub = self.create_publisher(ActionGoalMsg, p("action_goal_topic"), reliable)
            self.stats_pub = self.create_publisher(String, "~/frame_stats", reliable)
            self._stats_timer = self.create_timer(1.0 / p("stats_rate_hz"), self._publish_stats, callback_group=io_group)
            self.action_server = ActionServer(
                self,
                Guide,
                p("action_name"),
                execute_callback=self._execute,
                goal_callback=self._on_goal,
                handle_accepted_callback=self._on_accepted,
                cancel_callback=lambda _goal: CancelResponse.ACCEPT,
                callback_group=action_group,
            )
            # Load now so the first goal is fast; on failure the node still serves and each goal reports why.
            with contextlib.suppress(BackendError):  # already logged and kept in self._backend_error
                self._ensure_backend()
            self.get_logger().info(
                f"ready: backend={p('backend')} images on {self.resolve_topic_name(p('image_topic'))}, action {p('action_name')}"
            )

        # -- parameters ---------------------------------------------------------------------
        def _p(self, name: str) -> Any:
            return self.get_parameter(name).value

        def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
            for param in params:
                error = validate_parameter(param.name, param.value)
                if error:
                    self.get_logger().warning(error)
                    return SetParametersResult(successful=False, reason=error)
            if any(param.name == "stats_rate_hz" for param in params):
                rate = next(param.value for param in params if param.name == "stats_rate_hz")
                self._stats_timer.timer_period_ns = int(1e9 / rate)
            return SetParametersResult(successful=True)

        # -- frames (cheap: convert, validate, keep the latest) ------------------------------
        def _on_image(self, msg: Any) -> None:
            self._store(convert.frame_from_image, msg)

        def _on_compressed(self, msg: Any) -> None:
            self._store(convert.frame_from_compressed, msg)

        def _store(self, to_frame: Any, msg: Any) -> None:
            try:
                frame = to_frame(msg)
            except ValueError as exc:  # FrameError and Frame validation: counted, logged, survived
                self.frames.reject(exc)
                self.get_logger().error(f"rejected camera frame ({self.frames.rejected} so far): {exc}", throttle_duration_sec=1.0)
                return
            self.frames.put(frame)

        def _on_objects(self, msg: Any) -> None:
            try:
                self.objects.put(convert.objects_in_view_from_msg(msg))
            except ValueError as exc:  # counted, logged, survived; steps then run free
                self.objects.reject(exc)
                self.get_logger().error(f"rejected ObjectsInView: {exc}", throttle_duration_sec=1.0)

        def _on_step_result(self, msg: Any) -> None:
            self.results.put(msg.goal_id, msg)

        def _publish_stats(self) -> None:
            stats = self.frames.stats()
            stats["steps_published"] = self.steps_published
            stats["objects"] = self.objects.stats()
            self.stats_pub.publish(String(data=json.dumps(stats)))

        # -- backend ------------------------------------------------------------------------
        def _ensure_backend(self) -> Any:
            """The loaded backend for the current parameters; raises BackendError with the reason."""
            from model_runtime.backends.base import load_backend

            key = tuple(self._p(name) for name in _BACKEND_PARAMS)
            if key == self._backend_key:
                if self._backend is None:
                    raise BackendError(self._backend_error)
                return self._backend
            if self._backend is not None:
                self._backend.close()
            self._backend, self._backend_key, self._backend_error = None, key, ""
            name, model_path, device, env_id, sim_seed, trust_remote_code = key
            kwargs: dict[str, Any] = {"device": device}
            if model_path:
                kwargs["model_path"] = model_path
            if trust_remote_code and name != "oracle":
                kwargs["trust_remote_code"] = True
            try:
                if name == "oracle":
                    kwargs["env"] = self._make_sim_env(env_id, sim_seed)
                self._backend = load_backend(name, **kwargs)
            except Exception as exc:  # any load failure becomes the reason every goal reports
                self._backend_error = f"backend {name!r} failed to load: {type(exc).__name__}: {exc}"
                self.get_logger().error(self._backend_error)
                raise BackendError(self._backend_error) from exc
            self.get_logger().info(f"backend {name!r} loaded: {self._backend.model_id}")
            return self._backend

        def _make_sim_env(self, env_id: str, seed: int) -> Any:
            """The oracle's view of the simulation: a mirror of the sim bridge's env (same id and seed).

            The bridge executes each goal in its env; this node executes the same goal in the
            mirror when the bridge reports success, so the oracle's privileged state follows.
            """
            if not env_id:
                raise ValueError("the oracle backend needs the sim_env_id parameter (e.g. sim_envs/TableClear-v0)")
            import gymnasium as gym

            import sim_envs  # noqa: F401  (registers the ids)

            env = gym.make(env_id)
            env.reset(seed=seed)
            self._sim_env = env
            return env

        def _vocabulary(self) -> Any:
            if self._sim_env is None:
                return None
            from planner.parse import Vocabulary

            return Vocabulary.from_env(self._sim_env)

        # -- action server ------------------------------------------------------------------
        def _on_goal(self, goal: Any) -> Any:
            if not goal.instruction.strip():
                self.get_logger().warning("rejected a Guide goal with an empty instruction")
                return GoalResponse.REJECT
            if goal.mode not in (Guide.Goal.MODE_ONE_SHOT, Guide.Goal.MODE_CONTINUOUS):
                self.get_logger().warning(f"rejected a Guide goal with unknown mode {goal.mode}")
                return GoalResponse.REJECT
            return GoalResponse.ACCEPT

        def _on_accepted(self, goal_handle: Any) -> None:
            with self._goal_lock:
                if self._active_goal is not None and self._active_goal.is_active:
                    self._preempted.add(id(self._active_goal))
                    self.get_logger().info("a new Guide goal preempts the running one")
                self._active_goal = goal_handle
            goal_handle.execute()

        def _options(self, goal: Any) -> DecodeOptions:
            return DecodeOptions(
                mode=(goal.decode_mode or self._p("decode_mode")) or None,  # None: the model's own default
                dida_steps=int(goal.decode_steps or self._p("decode_steps")),
                guidance_scale=float(goal.guidance_scale if goal.guidance_scale >= 0 else self._p("guidance_scale")),
                seed=int(self._p("seed")),
            )

        def _execute(self, goal_handle: Any) -> Any:
            """Run one Guide goal through the one step loop (planner.loop) and report its plan."""
            goal = goal_handle.request
            stopped = lambda: goal_handle.is_cancel_requested or id(goal_handle) in self._preempted or not goal_handle.is_active  # noqa: E731
            try:
                backend = self._ensure_backend()
                goal_frames = [convert.frame_from_image(m) for m in goal.images]  # FrameError aborts the goal
                loop = self._make_loop(goal_handle, goal, backend, goal_frames, stopped)
                with self._backend_lock:  # one goal at a time uses the backend (backends are not thread-safe)
                    result = loop.run()
            except Exception as exc:  # backend/frame/instruction errors end THIS goal with the message; the node keeps serving
                message = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"Guide goal failed: {message}")
                goal_handle.abort()
                return self._result(None, goal.instruction, PlanStatus.FAILED, message)
            finally:
                self._preempted.discard(id(goal_handle))
            status, plan = result.status, result.plan
            if status == PlanStatus.CANCELED:
                reason = "preempted by a newer goal" if not goal_handle.is_cancel_requested else "canceled"
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                else:
                    goal_handle.abort()
                return self._result(plan, goal.instruction, status, reason)
            if status == PlanStatus.FAILED:
                self.get_logger().warning(f"Guide goal failed: {result.stop_reason}")
                goal_handle.abort()
                return self._result(plan, goal.instruction, status, result.stop_reason)
            goal_handle.succeed()
            return self._result(plan, goal.instruction, status, "")

        def _make_loop(self, goal_handle: Any, goal: Any, backend: Any, goal_frames: list[Frame], stopped: Any) -> GuidanceLoop:
            h, w = self._p("image_height"), self._p("image_width")
            max_steps = int(goal.max_steps or self._p("max_steps"))
            continuous = goal.mode == Guide.Goal.MODE_CONTINUOUS
            config = LoopConfig(
                decode=self._options(goal),
                # Continuous: max_steps is the goal's budget of planning calls (spent = failed); the node
                # sets no wall-clock limit. One-shot: max_steps is the horizon of the plan asked for.
                # A retry re-sends a goal the robot reported failed; without StepResults there is nothing
                # to retry on: a step the new frame does not confirm is planned again from that frame.
                monitor=MonitorConfig(max_planning_calls=max_steps + (0 if continuous else 1),
                                      max_retries=1 if self._p("wait_for_step_result") else 0,
                                      max_attempts=2 * max_steps + 1, time_limit_s=float("inf"), max_replans=max_steps),
                grounded_decoding=bool(self._p("objects_topic")),
                frame_size=(h, w) if h > 0 and w > 0 else None,
                keep_images=False,
                horizon=None if continuous else max_steps,
            )
            if continuous:
                on_success = (lambda g: self._sim_env.unwrapped.execute_skill(g)) if self._sim_env is not None else None
                executor: Any = RobotExecutor(
                    self._publish_goal, self.results, self.frames, stopped,
                    wait_for_result=self._p("wait_for_step_result"), result_timeout_s=self._p("step_result_timeout_s"),
                    frame_timeout_s=self._p("frame_timeout_s"), max_frame_age_s=self._p("max_frame_age_s"),
                    rate_hz=self._p("replan_rate_hz"), on_success=on_success,
                    fixed_frame=goal_frames[-1] if goal_frames else None,
                    knows_task_done=self._p("executor_knows_task_done"),
                )
            else:  # one-shot: the whole plan from one view (the goal's image, else the latest camera frame)
                frame = goal_frames[-1] if goal_frames else self._one_frame(stopped)
                executor = PublishingPlanAhead(frame, self._publish_goal)
            objects = DetectorTopic(self.objects, self._p("max_objects_age_s")) if self._p("objects_topic") else None
            return GuidanceLoop(
                backend, goal.instruction, executor, config, vocabulary=self._vocabulary(), objects=objects,
                on_plan=lambda step, plan: self._publish_step(goal_handle, plan, step), should_stop=stopped,
            )

        def _one_frame(self, stopped: Any) -> Frame:
            got = self.frames.wait_newer(0, 0.0, self._p("frame_timeout_s"), self._p("max_frame_age_s"), stopped)
            if got is None:
                raise ExecutorError(f"no camera frame within frame_timeout_s={self._p('frame_timeout_s')} s")
            return got[0]

        def _publish_goal(self, goal: ActionGoal) -> None:
            self.goal_pub.publish(convert.action_goal_msg(self.factory, goal))

        def _publish_step(self, goal_handle: Any, plan: Any, step: Any) -> None:
            """Feedback and the plan so far for a planned step; a goal that will not be executed
            (not parsed or grounded) is still published once, its status saying why."""
            step_msg = convert.plan_step_msg(self.factory, step, plan.stamp, plan.frame_id)
            feedback = Guide.Feedback(step=step_msg, steps_done=len(plan.steps))
            goal_handle.publish_feedback(feedback)
            if step.goal is not None and step.goal.status != GoalStatus.OK:
                self._publish_goal(step.goal)
            self.plan_pub.publish(self._plan_msg(plan))
            self.steps_published += 1
            if self._p("plan_images") != "all" and len(plan.steps) > 1:
                # Memory stays flat over long continuous runs: older steps in the plan record lose their
                # images (already sent as feedback); backends keep their history (texts) untouched.
                prev = plan.steps[-2]
                if prev.subgoal_image is not None or prev.subgoal_tokens is not None:
                    plan.steps[-2] = dataclasses.replace(prev, subgoal_image=None, subgoal_tokens=None)

        def _plan_msg(self, plan: Any) -> Any:
            """Plan message with subgoal images per ``plan_images`` (a long run would otherwise grow each message)."""
            msg = convert.plan_msg(self.factory, plan)
            keep = self._p("plan_images")
            for i, step in enumerate(msg.steps):
                if keep == "none" or (keep == "last" and i != len(msg.steps) - 1):
                    step.subgoal_image = convert.empty_image_msg(self.factory, plan.stamp, plan.frame_id)
            return msg

        def _result(self, plan: Any, instruction: str, status: PlanStatus, error: str) -> Any:
            from emu_guide.types import Plan

            published = plan is not None
            if plan is None:
                plan = Plan(instruction=instruction or "?")
            plan.status, plan.error = status, error
            plan_msg = self._plan_msg(plan)
            if published:
                self.plan_pub.publish(plan_msg)
            return Guide.Result(plan=plan_msg, status=status.value, error_message=error)

        def destroy_node(self) -> None:
            if self._backend is not None:
                self._backend.close()
            if self._sim_env is not None:
                self._sim_env.close()
            self.action_server.destroy()
            super().destroy_node()

    return GuidanceNode


_NODE_CLASS: type | None = None


def node_class() -> type:
    global _NODE_CLASS
    if _NODE_CLASS is None:
        _NODE_CLASS = _make_node_class()
    return _NODE_CLASS


def main(args: list[str] | None = None) -> int:
    rclpy = require("rclpy")
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    node = None
    try:
        try:
            node = node_class()()
        except ValueError as exc:  # a bad initial parameter value: say which and exit non-zero
            print(f"emu_guidance node: {exc}", file=sys.stderr)
            return 2
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
