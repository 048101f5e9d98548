"""The guidance node's pieces that need no rclpy (the main venv's tests import them; the node
module itself imports rclpy at the top, ros2/examples style).

- ``ParamSpec`` / ``PARAMETERS`` / ``validate_parameter``: one parameter-spec style for both nodes
  (``SIM_BRIDGE_PARAMETERS`` for the sim bridge), every value checked with a reason;
- ``LatestFrame``, ``RecentObjects``, ``StepResults``: what subscription callbacks store and the
  running goal reads;
- the executors the node plugs into the one step loop: ``RobotExecutor`` (continuous goals),
  ``PublishingPlanAhead`` (one-shot goals), and ``DetectorTopic`` (the ObjectsInView topic as the
  loop's ObjectsSource);
- ``gate_config``: the safety gate's config (planner/safety.py) from the node's parameters;
- ``LatencyWindow`` and ``diagnostics``: the node's health as plain data (the node turns it into
  diagnostic_msgs/DiagnosticArray on /diagnostics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emu_guide.types import ActionGoal, DecodeMode, Frame, StepResult
from model_runtime.backends.base import BACKENDS, DEFAULT_DIDA_STEPS
from planner.executor import ExecutorError, PlanAheadExecutor
from planner.grounded import ObjectsInView
from planner.safety import ACTION_VERBS, SafetyConfig, parse_names, parse_workspace

# --- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its default fixes its type (ROS 2 parameters are strictly typed)."""

    default: Any
    description: str
    read_only: bool = False  # topics: fixed once the node has created its endpoints

    @property
    def type_name(self) -> str:
        """The ROS parameter type a value must have (as `ros2 param describe` names it)."""
        d = self.default
        return "bool" if isinstance(d, bool) else "integer" if isinstance(d, int) else "double" if isinstance(d, float) else "string"


PARAMETERS: dict[str, ParamSpec] = {
    # topics and names (read-only: endpoints are created once)
    "image_topic": ParamSpec("image_raw", "sensor_msgs/Image input (rgb8, bgr8, rgba8, bgra8, mono8, mono16)", True),
    "compressed_topic": ParamSpec("image_raw/compressed", "sensor_msgs/CompressedImage input (JPEG, PNG); '' disables", True),
    "plan_topic": ParamSpec("plan", "emu_guidance/Plan output (the plan so far, after every step)", True),
    "action_goal_topic": ParamSpec("action_goal", "emu_guidance/ActionGoal output (one per step)", True),
    "step_result_topic": ParamSpec("step_result", "emu_guidance/StepResult input from the executor", True),
    "objects_topic": ParamSpec("objects_in_view", "emu_guidance/ObjectsInView input (a detector's names per frame): grounded decoding; '' disables", True),
    "action_name": ParamSpec("guide", "name of the emu_guidance/action/Guide server", True),
    # lifecycle
    "autostart": ParamSpec(True, "configure and activate at start-up (ros2 run); the launch files set false and drive configure + activate themselves", True),
    # model
    "backend": ParamSpec("torch", f"guidance backend: one of {sorted(BACKENDS)}; a change reloads it"),
    "model_path": ParamSpec("", "model directory for torch/emu3/vllm ('' = the shipped default model)"),
    "trust_remote_code": ParamSpec(False, "run the checkpoint's own tokenizer code (the official Emu3.5 release); only for checkpoints you trust"),
    "device": ParamSpec("cpu", "torch device for model backends: cpu, cuda, cuda:N"),
    "sim_env_id": ParamSpec("", "oracle backend only: the sim_envs env id it reads privileged state from"),
    "sim_seed": ParamSpec(0, "oracle backend only: reset seed (must equal the sim bridge's)"),
    # decoding
    "decode_mode": ParamSpec("", "subgoal image decoding: dida, ar or oracle; '' = the model's own (DiDA when DiDA-adapted, else AR)"),
    "decode_steps": ParamSpec(DEFAULT_DIDA_STEPS, "DiDA parallel refinement steps (>= 1); the bench's default"),
    "guidance_scale": ParamSpec(-1.0, "classifier-free guidance on image tokens (1 = off; < 0 = the model's own: 1 for the shipped model, 3 for the Emu3.5/Emu3 releases)"),
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
    # safety gate (planner/safety.py): the last check before a goal is published
    "gate_verbs": ParamSpec(",".join(ACTION_VERBS), "safety gate: comma-separated verbs an executor may receive"),
    "object_names": ParamSpec("", "comma-separated object names your executor accepts: step sentences are parsed against them ('' = free phrases; not evidence an object is present)"),
    "target_names": ParamSpec("", "comma-separated destinations your executor accepts (receptacles, zones): 'put X in the Y' is parsed against them"),
    "gate_vocabulary": ParamSpec("", "safety gate: comma-separated names grounded by configuration (zones, receptacles, parts), besides what the detector sees"),
    "gate_workspace": ParamSpec("", "safety gate: target positions must lie in this box, 'xmin,ymin,zmin,xmax,ymax,zmax' in metres ('' = no box)"),
    "gate_workspace_frame": ParamSpec("", "safety gate: the frame gate_workspace is given in ('' = the goal's own frame)"),
    "gate_max_goal_rate_hz": ParamSpec(5.0, "safety gate: at most this many goals per second leave the node, faster ones are held (0 = no limit)"),
    "gate_require_approval": ParamSpec(False, "safety gate: hold each goal until it is approved through ~/approve_goal (emu_guidance/srv/ApproveGoal)"),
    "gate_approval_timeout_s": ParamSpec(30.0, "safety gate: a goal not approved within this many seconds is rejected (> 0)"),
}

# The sim bridge (emu_ros/sim_bridge_node.py): all fixed after start.
SIM_BRIDGE_PARAMETERS: dict[str, ParamSpec] = {
    "env_id": ParamSpec("sim_envs/TableClear-v0", "registered sim_envs environment id", True),
    "seed": ParamSpec(0, "reset seed (the guidance node's sim_seed must match for the oracle backend)", True),
    "camera_topic": ParamSpec("image_raw", "sensor_msgs/Image output", True),
    "camera_rate_hz": ParamSpec(10.0, "camera publishing rate (> 0)", True),
    "frame_id": ParamSpec("camera", "header.frame_id of published frames", True),
    "action_goal_topic": ParamSpec("action_goal", "emu_guidance/ActionGoal input", True),
    "step_result_topic": ParamSpec("step_result", "emu_guidance/StepResult output", True),
    "objects_topic": ParamSpec("objects_in_view", "emu_guidance/ObjectsInView output (the sim detector's names per frame); '' disables", True),
}

# Parameters whose change takes effect at the next goal by reloading the backend.
_BACKEND_PARAMS = ("backend", "model_path", "device", "sim_env_id", "sim_seed", "trust_remote_code")


def validate_parameter(name: str, value: Any, specs: dict[str, ParamSpec] | None = None) -> str | None:
    """None when ``value`` is acceptable for ``name`` (of ``specs``, default the guidance node's),
    else the reason (shown to whoever set it)."""
    specs = PARAMETERS if specs is None else specs
    if name not in specs:
        return f"unknown parameter {name!r}"
    default = specs[name].default
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
        "guidance_scale": (lambda v: v <= 100.0, "must be <= 100 (< 0 = the model's own)"),
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
        "gate_verbs": (_verbs_ok, f"must be comma-separated action verbs (e.g. {','.join(ACTION_VERBS)}; never done or stop)"),
        "gate_workspace": (_workspace_ok, "must be '' or 'xmin,ymin,zmin,xmax,ymax,zmax' with min < max"),
        "gate_max_goal_rate_hz": (lambda v: 0.0 <= v <= 1000.0, "must be in [0, 1000]"),
        "gate_approval_timeout_s": (lambda v: v > 0, "must be > 0"),
        # sim bridge
        "env_id": (bool, "must not be empty"),
        "camera_rate_hz": (lambda v: 0.0 < v <= 1000.0, "must be in (0, 1000]"),
        "camera_topic": (bool, "must not be empty"),
    }
    if name in checks:
        ok, why = checks[name]
        if not ok(value):
            return f"{name}={value!r} rejected: {why}"
    return None


def _verbs_ok(text: str) -> bool:
    try:
        return bool(SafetyConfig(allowed_verbs=parse_names(text)).allowed_verbs)
    except ValueError:
        return False


def _workspace_ok(text: str) -> bool:
    try:
        box = parse_workspace(text)
        if box is not None:
            SafetyConfig(workspace_min=box[0], workspace_max=box[1])
    except ValueError:
        return False
    return True


def type_error(name: str, value: Any, specs: dict[str, ParamSpec]) -> str:
    """The one-line start-up error for a value of the wrong ROS type (``-p replan_rate_hz:=2``)."""
    spec = specs[name]
    hint = f" (write {float(value)!r})" if spec.type_name == "double" and isinstance(value, int) and not isinstance(value, bool) else ""
    return f"parameter {name!r} must be of type {spec.type_name}, got {value!r}{hint}"


def gate_config(p: Callable[[str], Any]) -> SafetyConfig:
    """The safety gate's configuration from the node's parameters (``p(name)`` -> value)."""
    box = parse_workspace(p("gate_workspace"))
    return SafetyConfig(
        allowed_verbs=parse_names(p("gate_verbs")), vocabulary=parse_names(p("gate_vocabulary")),
        workspace_min=box[0] if box else None, workspace_max=box[1] if box else None,
        workspace_frame=p("gate_workspace_frame"), max_goal_rate_hz=float(p("gate_max_goal_rate_hz")),
        require_approval=bool(p("gate_require_approval")), approval_timeout_s=float(p("gate_approval_timeout_s")),
    )


# --- health (diagnostics as plain data) --------------------------------------------------------


class LatencyWindow:
    """The last ``keep`` step latencies (ms) and their percentiles."""

    def __init__(self, keep: int = 200) -> None:
        self._lock = threading.Lock()
        self._ms: list[float] = []
        self.keep = keep
        self.count = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._ms = [*self._ms[-(self.keep - 1) :], float(ms)]
            self.count += 1

    def percentiles(self) -> dict[str, float]:
        with self._lock:
            ms = sorted(self._ms)
        if not ms:
            return {}
        pick = lambda q: ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))]  # noqa: E731
        return {"p50_ms": round(pick(0.5), 2), "p95_ms": round(pick(0.95), 2), "max_ms": round(ms[-1], 2)}


OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


def diagnostics(state: str, backend: dict[str, Any], frames: dict[str, Any], objects: dict[str, Any],
                latency: dict[str, float], steps: int, gate: dict[str, Any]) -> list[dict[str, Any]]:
    """The node's health as DiagnosticStatus-shaped dicts: name, level, message, values (str -> str)."""
    if backend.get("error"):
        b_level, b_msg = ERROR, backend["error"]
    elif backend.get("loaded"):
        b_level, b_msg = OK, f"{backend['name']} loaded"
    else:
        b_level, b_msg = WARN, f"{backend.get('name', '?')} not loaded (lifecycle state {state})"
    rejected = sum(frames.get("rejected_by_reason", {}).values())
    f_level = WARN if frames.get("received", 0) == 0 and state == "active" else OK
    f_msg = f"{frames.get('received', 0)} frames received, {rejected} rejected, {frames.get('dropped', 0)} dropped"
    g_level = WARN if gate.get("rejected", 0) else OK
    g_msg = f"{gate.get('passed', 0)} goals passed, {gate.get('rejected', 0)} rejected" + (
        f" (last: {gate['last_rejection']})" if gate.get("last_rejection") else "")
    return [
        {"name": "emu_guidance: backend", "level": b_level, "message": b_msg,
         "values": {"lifecycle_state": state, **{k: str(v) for k, v in backend.items() if k != "error"}}},
        {"name": "emu_guidance: camera frames", "level": f_level, "message": f_msg,
         "values": {"received": frames.get("received", 0), "rejected": frames.get("rejected", 0), "dropped": frames.get("dropped", 0),
                    **{f"rejected: {k}": v for k, v in frames.get("rejected_by_reason", {}).items()},
                    "objects_received": objects.get("received", 0), "objects_rejected": objects.get("rejected", 0),
                    "steps_grounded": objects.get("steps_grounded", 0), "steps_free": objects.get("steps_free", 0)}},
        {"name": "emu_guidance: planning", "level": OK, "message": f"{steps} steps published",
         "values": {"steps_published": steps, **latency}},
        {"name": "emu_guidance: safety gate", "level": g_level, "message": g_msg,
         "values": {"passed": gate.get("passed", 0), "rejected": gate.get("rejected", 0),
                    **{f"rejected: {k}": v for k, v in gate.get("rejected_by_check", {}).items()},
                    "check_ms_max": gate.get("check_ms_max", 0.0)}},
    ]  # fmt: skip


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
        self.last_frame: Frame | None = fixed_frame  # the frame the current step is planned from

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
            self.last_frame = self.fixed_frame
            return self.fixed_frame
        pause = self.min_period - (time.monotonic() - self._last_time)
        if pause > 0 and self._last_seq:
            time.sleep(pause)
        got = self.frames.wait_newer(self._last_seq, self._last_time, self.frame_timeout_s, self.max_frame_age_s, self.stop)
        if got is None:
            raise ExecutorError(f"no camera frame within frame_timeout_s={self.frame_timeout_s} s")
        frame, self._last_seq = got
        self.last_frame = frame
        return frame


class PublishingPlanAhead(PlanAheadExecutor):
    """One-shot mode: the whole plan from one view; each goal is published and counted as done."""

    def __init__(self, frame: Frame, publish_goal: Any) -> None:
        super().__init__(frame)
        self.publish_goal = publish_goal
        self.last_frame: Frame | None = frame

    def execute(self, goal: ActionGoal) -> StepResult:
        self.publish_goal(goal)
        return super().execute(goal)


class DetectorTopic:
    """The ObjectsInView topic as the loop's ObjectsSource (the detection nearest the frame's stamp)."""

    def __init__(self, recent: RecentObjects, max_age_s: float) -> None:
        self.recent, self.max_age_s = recent, max_age_s

    def objects_for(self, frame: Frame) -> ObjectsInView | None:
        return self.recent.for_frame(frame.stamp, self.max_age_s)




# --- image views (no rclpy) ----------------------------------------------------------------------


def annotate(image: Any, step_index: int, sentence: str, goal: ActionGoal | None, min_width: int = 384) -> Any:
    """The camera frame a step was planned from with the step drawn on it (an RViz / Foxglove view):
    the sentence, the goal (verb, object, target, status) and a border, green when the goal may
    be sent, red when it is not ok (its reason on the last line). Small frames are scaled up
    (nearest) to at least ``min_width`` pixels so the text is legible. Returns HxWx3 uint8 RGB."""
    import cv2
    import numpy as np

    img = np.ascontiguousarray(image)
    scale = max(1, -(-min_width // img.shape[1]))
    if scale > 1:
        img = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    ok = goal is not None and goal.status.value == "ok"
    colour = (40, 200, 40) if ok or goal is None else (230, 40, 40)
    cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), colour, max(2, img.shape[1] // 96))
    lines = [f"{step_index}: {sentence}"[:60]]
    if goal is not None:
        lines.append(f"{goal.verb} {goal.object}" + (f" -> {goal.target}" if goal.target else "") + f" [{goal.status.value}]")
        if not ok and goal.reason:
            lines.append(goal.reason[:60])
    for i, text in enumerate(lines):
        y = 18 + 18 * i
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour if i else (255, 255, 255), 1, cv2.LINE_AA)
    return img
