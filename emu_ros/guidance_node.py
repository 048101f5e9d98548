"""The guidance node: camera frames + an instruction -> streamed plan steps and action goals.

A managed (lifecycle) node, ``emu_guidance`` (llama_ros style):

- configure: declares nothing new (parameters are declared at construction), loads the backend
  (the model) and fails the transition with the reason when it cannot (logged, and on
  /diagnostics as an ERROR); creates the publishers and the Guide action server;
- activate: subscribes to camera frames, StepResults and ObjectsInView, and accepts goals;
- deactivate: unsubscribes, rejects new goals, stops a running goal (a stop goal is sent);
- cleanup: releases the backend and the endpoints. The launch files drive configure + activate;
  ``autostart:=true`` makes the node do both itself (``ros2 run``, tests).

Graph (names are parameters; defaults shown):

- subscribes ``image_raw`` (sensor_msgs/Image) and ``image_raw/compressed``
  (sensor_msgs/CompressedImage) with sensor-data QoS; keeps only the latest valid frame;
- subscribes ``step_result`` (emu_guidance/StepResult) from the executor (robot or sim bridge);
- subscribes ``objects_in_view`` (emu_guidance/ObjectsInView) from a detector (grounded decoding
  and the safety gate's grounding);
- serves the ``guide`` action (emu_guidance/action/Guide): feedback per produced step, cancel and
  preemption (a newer goal ends the running one; both send a stop goal), result = the whole plan;
- publishes ``plan`` (emu_guidance/Plan, transient local: a late subscriber gets the latest),
  ``action_goal`` (emu_guidance/ActionGoal, one per step, after the safety gate; verb "stop" on
  cancel/preemption/deactivation), ``~/subgoal_image`` and ``~/annotated_image``
  (sensor_msgs/Image rgb8), ``~/pending_goal`` (goals held for approval), ``/diagnostics``
  (diagnostic_msgs/DiagnosticArray) and ``~/frame_stats`` (std_msgs/String, JSON counters);
- serves ``~/approve_goal`` (emu_guidance/srv/ApproveGoal) for the safety gate's approval mode.

Threads: subscriptions and timers run in one mutually-exclusive callback group and only convert
and store frames; the action server runs in its own reentrant group, where the backend is called
(under a lock: backends are not thread-safe). A multi-threaded executor runs both
(``node_common.SubmitOnceExecutor``: rclpy's own resubmits callbacks while the model holds the GIL).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from emu_guide.optional import require
from emu_guide.types import ActionGoal, Frame, GoalStatus, PlanStatus
from emu_ros import convert
from emu_ros.node_common import declare_parameters, main_for
from emu_ros.node_parts import (
    _BACKEND_PARAMS,
    PARAMETERS,
    DetectorTopic,
    LatencyWindow,
    LatestFrame,
    PublishingPlanAhead,
    RecentObjects,
    RobotExecutor,
    StepResults,
    annotate,
    diagnostics,
    gate_config,
    validate_parameter,
)
from model_runtime.backends.base import BackendError, DecodeOptions
from planner.executor import ExecutorError
from planner.loop import GuidanceLoop, LoopConfig
from planner.monitor import MonitorConfig
from planner.safety import ApprovalDesk, SafetyGate

require("emu_guidance")  # the generated interfaces (colcon build / scripts/ros_venv.sh)
from emu_guidance.action import Guide  # noqa: E402
from emu_guidance.msg import ActionGoal as ActionGoalMsg  # noqa: E402
from emu_guidance.msg import ObjectsInView as ObjectsInViewMsg  # noqa: E402
from emu_guidance.msg import Plan as PlanMsg  # noqa: E402
from emu_guidance.msg import StepResult as StepResultMsg  # noqa: E402
from emu_guidance.srv import ApproveGoal  # noqa: E402

__all__ = ["PARAMETERS", "GuidanceNode", "main", "validate_parameter"]

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
STOP_VERB = "stop"  # ActionGoal.verb sent to the executor on cancel, preemption and deactivation
WARM_UP_INSTRUCTION = "clear the table"  # the configure step's throw-away request (the shipped model reads it)


class GuidanceNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("emu_guidance", **kwargs)
        declare_parameters(self, PARAMETERS)  # ParameterError (one line) on a bad start-up value
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.factory = convert.rclpy_factory()
        self.frames = LatestFrame()
        self.objects = RecentObjects()
        self.results = StepResults()  # goal_id -> StepResult msg
        self.latency = LatencyWindow()
        self.steps_published = 0
        self._backend: Any = None
        self._backend_key: tuple | None = None
        self._backend_error = ""
        self._sim_env: Any = None
        self._backend_lock = threading.Lock()  # one next_step at a time
        self._goal_lock = threading.Lock()
        self._active_goal: Any = None  # the goal handle being executed
        self._preempted: set[int] = set()  # id() of goal handles a newer goal replaced
        self._state = "unconfigured"
        self._active = False
        self._rejected_at_start = 0  # the gate's rejection count when the running goal began
        self._subs: list[Any] = []
        self.action_server: Any = None
        self.desk = ApprovalDesk(self._p("gate_approval_timeout_s"), announce=self._announce_pending)
        self.gate = SafetyGate(gate_config(self._p), approver=self.desk.request)

        self.io_group = MutuallyExclusiveCallbackGroup()
        self.action_group = ReentrantCallbackGroup()
        # Health is published in every lifecycle state (a configure that failed is an ERROR there).
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
        self.stats_pub = self.create_publisher(String, "~/frame_stats", RELIABLE)
        self._stats_timer = self.create_timer(1.0 / self._p("stats_rate_hz"), self._publish_health, callback_group=self.io_group)
        self.create_service(ApproveGoal, "~/approve_goal", self._on_approve, callback_group=self.io_group)
        if self._p("autostart"):
            self.trigger_configure()
            if self._state == "inactive":
                self.trigger_activate()

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._warm_up(self._ensure_backend())
        except BackendError as exc:  # the reason is logged and on /diagnostics; the node stays unconfigured
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self._p
        self.plan_pub = self.create_publisher(PlanMsg, p("plan_topic"), LATCHED)
        self.goal_pub = self.create_publisher(ActionGoalMsg, p("action_goal_topic"), RELIABLE)
        self.pending_pub = self.create_publisher(ActionGoalMsg, "~/pending_goal", LATCHED)
        self.subgoal_pub = self.create_publisher(Image, "~/subgoal_image", RELIABLE)
        self.annotated_pub = self.create_publisher(Image, "~/annotated_image", RELIABLE)
        self.action_server = ActionServer(
            self, Guide, p("action_name"), execute_callback=self._execute, goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted, cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=self.action_group,
        )  # fmt: skip
        self._state = "inactive"
        self.get_logger().info(f"configured: backend {p('backend')!r} loaded, action {p('action_name')}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p, g = self._p, self.io_group
        self._subs = [self.create_subscription(Image, p("image_topic"), self._on_image, qos_profile_sensor_data, callback_group=g),
                      self.create_subscription(StepResultMsg, p("step_result_topic"), self._on_step_result, RELIABLE, callback_group=g)]  # fmt: skip
        if p("compressed_topic"):
            self._subs.append(self.create_subscription(CompressedImage, p("compressed_topic"), self._on_compressed,
                                                       qos_profile_sensor_data, callback_group=g))  # fmt: skip
        if p("objects_topic"):
            self._subs.append(self.create_subscription(ObjectsInViewMsg, p("objects_topic"), self._on_objects, RELIABLE, callback_group=g))
        self._active, self._state = True, "active"
        self.get_logger().info(f"ready: backend={p('backend')} images on {self.resolve_topic_name(p('image_topic'))}, action {p('action_name')}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active, self._state = False, "inactive"  # a running goal sees it and stops (a stop goal is sent)
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self.get_logger().info("deactivated: no frames, no new goals")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        with self._backend_lock:
            if self._backend is not None:
                self._backend.close()
            if self._sim_env is not None:
                self._sim_env.close()
            self._backend, self._backend_key, self._sim_env = None, None, None
        if self.action_server is not None:
            self.action_server.destroy()
            self.action_server = None
        for name in ("plan_pub", "goal_pub", "pending_pub", "subgoal_pub", "annotated_pub"):
            if hasattr(self, name):
                self.destroy_publisher(getattr(self, name))
                delattr(self, name)

    # -- parameters -----------------------------------------------------------------------------
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

    # -- frames (cheap: convert, validate, keep the latest) -------------------------------------
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

    # -- health ---------------------------------------------------------------------------------
    def _publish_health(self) -> None:
        stats = self.frames.stats()
        stats["steps_published"] = self.steps_published
        stats["objects"] = self.objects.stats()
        stats["gate"] = self.gate.stats()
        stats["lifecycle_state"] = self._state
        self.stats_pub.publish(String(data=json.dumps(stats)))
        backend = {"name": self._p("backend"), "loaded": self._backend is not None, "error": self._backend_error,
                   "model_id": getattr(self._backend, "model_id", "")}  # fmt: skip
        statuses = diagnostics(self._state, backend, stats, stats["objects"], self.latency.percentiles(),
                               self.steps_published, stats["gate"])  # fmt: skip
        array = DiagnosticArray(header=self.factory.header(time.time(), ""))
        for s in statuses:
            array.status.append(DiagnosticStatus(
                level=bytes([s["level"]]), name=s["name"], message=s["message"][:500], hardware_id="emu_guidance",
                values=[KeyValue(key=k, value=str(v)) for k, v in s["values"].items()]))  # fmt: skip
        self.diag_pub.publish(array)

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

    def _warm_up(self, backend: Any) -> None:
        """One throw-away step on a blank frame at configure, so the first goal does not pay the
        backend's first call (torch: allocations, kernel choice; 250-300 ms against ~100 ms after).
        The oracle has nothing to warm; a model that cannot read the warm-up instruction skips it."""
        if getattr(backend, "name", "") == "oracle":
            return
        import numpy as np

        h, w = (int(x) for x in backend.image_size)
        frame = Frame(np.zeros((h, w, 3), np.uint8), stamp=0.0, frame_id="warm_up")
        t0 = time.perf_counter()
        try:
            check = getattr(backend, "check_instruction", None)
            if check is not None:
                check(WARM_UP_INSTRUCTION)
            with self._backend_lock:
                backend.next_step(frame, WARM_UP_INSTRUCTION, [], self._options(None))
        except BackendError as exc:  # e.g. a word-level model that does not know the words: the first goal is cold
            self.get_logger().warning(f"warm-up step skipped: {exc}")
            return
        self.get_logger().info(f"warm-up step: {(time.perf_counter() - t0) * 1e3:.0f} ms")

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
        """The names sentences are parsed against: the oracle's sim scene, else the configured ones."""
        from planner.parse import Vocabulary
        from planner.safety import parse_names

        if self._sim_env is not None:
            return Vocabulary.from_env(self._sim_env)
        objects, targets = parse_names(self._p("object_names")), parse_names(self._p("target_names"))
        if not objects and not targets:
            return None
        return Vocabulary(objects, targets, objects_present=False)

    # -- action server ------------------------------------------------------------------
    def _on_goal(self, goal: Any) -> Any:
        if not self._active:
            self.get_logger().warning(f"rejected a Guide goal: the node is {self._state}, not active")
            return GoalResponse.REJECT
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

    def _options(self, goal: Any | None) -> DecodeOptions:
        """Decoding for a Guide goal (its fields override the parameters); None: the parameters'."""
        scale = goal.guidance_scale if goal and goal.guidance_scale >= 0 else self._p("guidance_scale")
        return DecodeOptions(
            mode=((goal.decode_mode if goal else "") or self._p("decode_mode")) or None,  # None: the model's own default
            dida_steps=int((goal.decode_steps if goal else 0) or self._p("decode_steps")),
            guidance_scale=float(scale) if scale >= 0 else None,  # None: the model's own
            seed=int(self._p("seed")),
        )

    def _execute(self, goal_handle: Any) -> Any:
        """Run one Guide goal through the one step loop (planner.loop) and report its plan."""
        goal = goal_handle.request
        stopped = lambda: (goal_handle.is_cancel_requested or id(goal_handle) in self._preempted  # noqa: E731
                           or not goal_handle.is_active or not self._active)
        self._rejected_at_start = self.gate.stats()["rejected"]
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
            reason = "canceled" if goal_handle.is_cancel_requested else \
                "preempted by a newer goal" if self._active else "the node was deactivated"
            self._publish_stop(plan, reason)
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
            monitor=MonitorConfig.for_request(max_steps + (0 if continuous else 1),
                                              max_retries=1 if self._p("wait_for_step_result") else 0),
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
        self.gate.config = gate_config(self._p)  # parameters may have changed since the last goal
        self.desk.timeout_s = self.gate.config.approval_timeout_s
        return GuidanceLoop(
            backend, goal.instruction, executor, config, vocabulary=self._vocabulary(), objects=objects,
            on_plan=lambda step, plan: self._publish_step(goal_handle, plan, step, executor), should_stop=stopped,
            on_text=lambda step, plan, frame: self._publish_sentence(goal_handle, plan, step, frame),
            gate=self.gate,
        )

    def _one_frame(self, stopped: Any) -> Frame:
        got = self.frames.wait_newer(0, 0.0, self._p("frame_timeout_s"), self._p("max_frame_age_s"), stopped)
        if got is None:
            raise ExecutorError(f"no camera frame within frame_timeout_s={self._p('frame_timeout_s')} s")
        return got[0]

    def _publish_goal(self, goal: ActionGoal) -> None:
        self.goal_pub.publish(convert.action_goal_msg(self.factory, goal))

    def _publish_stop(self, plan: Any, reason: str) -> None:
        """Tell the executor to stop whatever goal it runs: an ActionGoal with verb "stop"."""
        if not hasattr(self, "goal_pub"):
            return
        last = next((s.goal for s in reversed(plan.steps) if s.goal is not None), None) if plan is not None else None
        msg = ActionGoalMsg(goal_id=f"stop-{uuid.uuid4().hex[:12]}", verb=STOP_VERB, status="ok", confidence=1.0,
                            reason=reason + (f" (last goal {last.goal_id})" if last is not None else ""))  # fmt: skip
        msg.header = self.factory.header(time.time(), "")
        msg.step_index = last.step_index if last is not None else 0
        msg.target_pose.orientation.w = 1.0
        self.goal_pub.publish(msg)
        self.get_logger().info(f"sent stop to the executor: {msg.reason}")

    def _announce_pending(self, goal: ActionGoal) -> None:
        """A goal held for approval: published on ~/pending_goal for whoever approves."""
        if hasattr(self, "pending_pub"):
            self.pending_pub.publish(convert.action_goal_msg(self.factory, goal))
        self.get_logger().info(f"goal {goal.goal_id} ({goal.verb} {goal.object!r}) waits for approval on ~/approve_goal")

    def _on_approve(self, request: Any, response: Any) -> Any:
        response.accepted, response.message = self.desk.decide(request.goal_id, request.approve, request.reason)
        return response

    def _publish_sentence(self, goal_handle: Any, plan: Any, step: Any, frame: Frame) -> None:
        """Feedback with a step's sentence as soon as it is decoded (``image_pending``): the subgoal
        image takes about as long again, and whoever reads the plan need not wait for it."""
        feedback = Guide.Feedback(step=convert.plan_step_msg(self.factory, step, frame.stamp, frame.frame_id),
                                  image_pending=True, steps_done=len(plan.steps),
                                  gate_rejections=self.gate.stats()["rejected"] - self._rejected_at_start)
        goal_handle.publish_feedback(feedback)

    def _publish_step(self, goal_handle: Any, plan: Any, step: Any, executor: Any = None) -> None:
        """Feedback and the plan so far for a planned step; a goal that will not be executed
        (not parsed or grounded) is still published once, its status saying why."""
        step_msg = convert.plan_step_msg(self.factory, step, plan.stamp, plan.frame_id)
        feedback = Guide.Feedback(step=step_msg, steps_done=len(plan.steps),
                                  gate_rejections=self.gate.stats()["rejected"] - self._rejected_at_start)
        goal_handle.publish_feedback(feedback)  # first: the latency-critical output; the views follow
        if "total" in step.timings_ms:
            self.latency.add(step.timings_ms["total"])
        stamp, frame_id = plan.stamp, plan.frame_id
        if step.subgoal_image is not None:
            self.subgoal_pub.publish(convert.image_msg(self.factory, step.subgoal_image, stamp, frame_id))
        frame = getattr(executor, "last_frame", None)
        if frame is not None:
            view = annotate(frame.image, step.index, step.text, step.goal)
            self.annotated_pub.publish(convert.image_msg(self.factory, view, stamp, frame_id))
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
        self._active = False
        self._release()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return main_for(GuidanceNode, args, "emu_guidance node")


if __name__ == "__main__":
    raise SystemExit(main())
