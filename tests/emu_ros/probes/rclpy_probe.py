"""Real-rclpy probe node for the ROS test tier (run with .ros_venv/bin/python, never imported by pytest).

    python rclpy_probe.py SCENARIO JSON_ARGS   -> prints one line "RESULT <json>" and exits

Each scenario talks to a running guidance node over Fast DDS: publishes camera frames, sends Guide
goals, sets parameters, listens to Plan/ActionGoal/~/frame_stats, and reports what it saw.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from emu_guidance.action import Guide
from emu_guidance.msg import ActionGoal, ObjectsInView, Plan, StepResult
from emu_guidance.srv import ApproveGoal
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from emu_ros import convert

NODE = "/emu_guidance"
FACTORY = convert.rclpy_factory()
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class Probe(Node):
    def __init__(self) -> None:
        super().__init__("probe")
        self.image_pub = self.create_publisher(Image, "image_raw", qos_profile_sensor_data)
        self.compressed_pub = self.create_publisher(CompressedImage, "image_raw/compressed", qos_profile_sensor_data)
        self.result_pub = self.create_publisher(StepResult, "step_result", RELIABLE)
        self.plans: list[tuple[float, Any]] = []
        self.goals: list[tuple[float, Any]] = []
        self.stats: list[dict] = []
        self.published: dict[float, float] = {}  # frame stamp -> monotonic publish time
        self.latest_stamp = 0.0
        self.lock = threading.Lock()
        self.create_subscription(Plan, "plan", lambda m: self._add(self.plans, m), RELIABLE)
        self.create_subscription(ActionGoal, "action_goal", lambda m: self._add(self.goals, m), RELIABLE)
        self.step_results: list[tuple[float, Any]] = []
        self.step_result_sub = self.create_subscription(StepResult, "step_result",
                                                        lambda m: self._add(self.step_results, m), RELIABLE)
        self.create_subscription(String, f"{NODE}/frame_stats", lambda m: self.stats.append(json.loads(m.data)), RELIABLE)
        self.client = ActionClient(self, Guide, "guide")
        self.set_client = self.create_client(SetParameters, f"{NODE}/set_parameters")
        self.get_client = self.create_client(GetParameters, f"{NODE}/get_parameters")
        self.rng = np.random.default_rng(0)

    def _add(self, store: list, msg: Any) -> None:
        with self.lock:
            store.append((time.monotonic(), msg))

    def wait_outputs(self, timeout: float = 30.0) -> None:
        """Reliable but volatile: a Plan/ActionGoal published before our subscriptions matched is not
        delivered. Wait until the node's publishers are in the graph, then a moment for matching."""
        deadline = time.monotonic() + timeout
        while self.count_publishers("/plan") == 0 or self.count_publishers("/action_goal") == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the node's plan / action_goal publishers never appeared")
            time.sleep(0.05)
        time.sleep(0.3)

    def wait_matched(self, timeout: float = 30.0) -> None:
        """Best-effort samples published before discovery matched are lost: wait for the node's subscriptions."""
        deadline = time.monotonic() + timeout
        while self.image_pub.get_subscription_count() == 0 or self.compressed_pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("no subscriber matched image_raw / image_raw/compressed")
            time.sleep(0.05)

    # -- frames -----------------------------------------------------------------------------
    def frame(self, h: int = 96, w: int = 96) -> np.ndarray:
        return self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def publish_image(self, rgb: np.ndarray, encoding: str = "rgb8") -> float:
        stamp = round(time.time(), 6)
        msg = convert.image_msg(FACTORY, rgb, stamp, "probe_cam")
        if encoding == "bgr8":
            msg.encoding, msg.data = "bgr8", np.ascontiguousarray(rgb[:, :, ::-1]).tobytes()
        self.image_pub.publish(msg)
        with self.lock:
            self.published[key(stamp)] = time.monotonic()
            self.latest_stamp = stamp
        return stamp

    def publish_compressed(self, rgb: np.ndarray, fmt: str = "jpeg") -> float:
        stamp = round(time.time(), 6)
        self.compressed_pub.publish(convert.compressed_msg(FACTORY, rgb, stamp, "probe_cam", fmt))
        with self.lock:
            self.published[key(stamp)] = time.monotonic()
            self.latest_stamp = stamp
        return stamp

    def publish_bad(self, kind: str) -> None:
        if kind == "encoding":
            msg = convert.image_msg(FACTORY, self.frame(8, 8), 1.0)
            msg.encoding = "yuv422"
        elif kind == "size":
            msg = convert.image_msg(FACTORY, self.frame(8, 8), 1.0)
            msg.height = 9  # data no longer matches step x height
        elif kind == "empty":
            msg = convert.image_msg(FACTORY, self.frame(8, 8), 1.0)
            msg.data = b""
        elif kind == "jpeg":
            msg = CompressedImage(header=FACTORY.header(1.0, "x"), format="jpeg", data=b"\xff\xd8 definitely not a jpeg")
            self.compressed_pub.publish(msg)
            return
        else:
            raise ValueError(kind)
        self.image_pub.publish(msg)

    # -- goals ------------------------------------------------------------------------------
    def send_goal(self, instruction: str, mode: int = 0, max_steps: int = 1, images: list | None = None, feedback: list | None = None) -> Any:
        if not self.client.wait_for_server(timeout_sec=20):
            raise RuntimeError("Guide action server not available")
        self.wait_outputs()
        goal = Guide.Goal(instruction=instruction, mode=mode, max_steps=max_steps, images=images or [])
        cb = (lambda fb: feedback.append((time.monotonic(), fb.feedback))) if feedback is not None else None
        fut = self.client.send_goal_async(goal, feedback_callback=cb)
        handle = wait(fut, 20)
        return handle

    # -- parameters -------------------------------------------------------------------------
    def set_param(self, name: str, value: Any) -> tuple[bool, str]:
        if isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, int):
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        elif isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        assert self.set_client.wait_for_service(timeout_sec=20)
        req = SetParameters.Request(parameters=[ParameterMsg(name=name, value=pv)])
        res = wait(self.set_client.call_async(req), 20).results[0]
        return bool(res.successful), res.reason

    def get_params(self, names: list[str]) -> dict:
        assert self.get_client.wait_for_service(timeout_sec=20)
        res = wait(self.get_client.call_async(GetParameters.Request(names=names)), 20)
        out = {}
        for name, v in zip(names, res.values):
            out[name] = {1: v.bool_value, 2: v.integer_value, 3: v.double_value, 4: v.string_value}.get(v.type)
        return out


def key(stamp: float) -> int:
    """Frame stamps as integer microseconds (float stamps do not survive sec/nanosec exactly)."""
    return round(stamp * 1e6)


def wait(future: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for a future")
        time.sleep(0.005)
    return future.result()


def stream(probe: Probe, stop: threading.Event, hz: float, kinds: tuple[str, ...] = ("rgb8",), h: int = 96, w: int = 96,
           bad_every: int = 0, counts: dict | None = None) -> threading.Thread:  # fmt: skip
    """Publish frames at ``hz`` in a thread (cycling through ``kinds``; every ``bad_every``-th frame invalid)."""
    counts = counts if counts is not None else {}
    probe.wait_matched()
    bad_kinds = ("encoding", "size", "empty", "jpeg")
    image = probe.frame(h, w)

    def run() -> None:
        i, t_next = 0, time.monotonic()
        while not stop.is_set():
            i += 1
            if bad_every and i % bad_every == 0:
                kind = bad_kinds[(i // bad_every) % len(bad_kinds)]
                probe.publish_bad(kind)
                counts["bad"] = counts.get("bad", 0) + 1
            else:
                kind = kinds[i % len(kinds)]
                if kind in ("jpeg", "png"):
                    probe.publish_compressed(image, kind)
                else:
                    probe.publish_image(image, kind)
                counts["good"] = counts.get("good", 0) + 1
            t_next += 1.0 / hz
            time.sleep(max(0.0, t_next - time.monotonic()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def step_dict(step: Any) -> dict:
    return {"index": step.index, "sentence": step.sentence, "verb": step.action_goal.verb, "object": step.action_goal.object,
            "goal_id": step.action_goal.goal_id, "stamp": convert.stamp_to_float(step.action_goal.header.stamp),
            "image": [step.subgoal_image.height, step.subgoal_image.width, step.subgoal_image.encoding],
            "is_final": step.is_final, "decode_mode": step.decode_mode}  # fmt: skip


def result_dict(handle: Any, timeout: float = 60) -> dict:
    res = wait(handle.get_result_async(), timeout)
    return {"ros_status": res.status, "status": res.result.status, "error": res.result.error_message,
            "steps": [step_dict(s) for s in res.result.plan.steps], "plan_status": res.result.plan.status}  # fmt: skip


# --- scenarios --------------------------------------------------------------------------------


def scenario_oneshot(probe: Probe, args: dict) -> dict:
    """Frames in (rgb8, bgr8, JPEG, PNG) -> one-shot goal -> feedback, result, Plan and ActionGoal topics."""
    stop, counts = threading.Event(), {}
    stream(probe, stop, 20.0, ("rgb8", "bgr8", "jpeg", "png"), counts=counts)
    time.sleep(1.0)
    feedback: list = []
    t_goal = time.monotonic()
    handle = probe.send_goal(args["instruction"], mode=0, max_steps=args.get("max_steps", 2), feedback=feedback)
    result = result_dict(handle)
    time.sleep(0.5)
    stop.set()
    fb_steps = [step_dict(fb.step) for _, fb in feedback]
    first = key(fb_steps[0]["stamp"]) if fb_steps else None
    latencies = [feedback[0][0] - probe.published[first]] if first in probe.published else []
    return {"accepted": handle.accepted, "result": result, "feedback": fb_steps, "steps_done": [fb.steps_done for _, fb in feedback],
            "plans": [{"n": len(m.steps), "status": m.status, "stamp": convert.stamp_to_float(m.header.stamp), "frame_id": m.header.frame_id,
                       "instruction": m.instruction, "model_id": m.model_id} for _, m in probe.plans],
            "goals": [{"verb": m.verb, "object": m.object, "goal_id": m.goal_id, "stamp": convert.stamp_to_float(m.header.stamp)} for _, m in probe.goals],
            "published_keys": sorted(probe.published), "frame_in_to_feedback_s": latencies,
            "goal_to_feedback_s": feedback[0][0] - t_goal if feedback else None, "counts": counts}  # fmt: skip


def scenario_params(probe: Probe, args: dict) -> dict:
    """Accepted and rejected parameter changes; values read back."""
    trials = [("decode_steps", 6), ("guidance_scale", 2.5), ("decode_mode", "ar"), ("max_steps", 5),
              ("decode_steps", 0), ("guidance_scale", 101.0), ("backend", "nope"), ("decode_mode", "fast"),
              ("replan_rate_hz", 0.0), ("device", "tpu"), ("image_topic", "other"), ("decode_steps", "eight"),
              ("plan_images", "some")]  # fmt: skip
    out = {f"{n}={v!r}": probe.set_param(n, v) for n, v in trials}
    out["values"] = probe.get_params(["decode_steps", "guidance_scale", "decode_mode", "max_steps", "backend", "image_topic"])
    return out


def scenario_bad_frames(probe: Probe, args: dict) -> dict:
    """Invalid frames are counted and survived; a goal still succeeds from a valid frame."""
    probe.wait_matched()
    for _ in range(args.get("repeat", 3)):
        for kind in ("encoding", "size", "empty", "jpeg"):
            probe.publish_bad(kind)
            time.sleep(0.05)
    stamp = 0.0
    for _ in range(5):
        stamp = probe.publish_image(probe.frame())
        time.sleep(0.05)
    time.sleep(args.get("stats_wait", 2.5))
    handle = probe.send_goal(args["instruction"], mode=0, max_steps=1)
    return {"stats": probe.stats[-1] if probe.stats else None, "result": result_dict(handle), "last_good_stamp": stamp}


def scenario_cancel_preempt(probe: Probe, args: dict) -> dict:
    """A continuous goal waits for step results that never come: cancel it; then preempt another."""
    stop = threading.Event()
    stream(probe, stop, 10.0)
    time.sleep(0.5)
    fb1: list = []
    h1 = probe.send_goal(args["instruction"], mode=1, max_steps=50, feedback=fb1)
    t0 = time.monotonic()
    while not fb1 and time.monotonic() - t0 < 20:
        time.sleep(0.02)
    cancel = wait(h1.cancel_goal_async(), 20)
    r1 = result_dict(h1)
    fb2: list = []
    h2 = probe.send_goal(args["instruction"], mode=1, max_steps=50, feedback=fb2)
    t0 = time.monotonic()
    while not fb2 and time.monotonic() - t0 < 20:
        time.sleep(0.02)
    h3 = probe.send_goal(args["instruction"], mode=0, max_steps=1)
    r2, r3 = result_dict(h2), result_dict(h3)
    stop.set()
    time.sleep(0.5)
    stops = [{"reason": m.reason, "status": m.status} for _, m in probe.goals if m.verb == ActionGoal.VERB_STOP]
    return {"cancel_goals": len(cancel.goals_canceling), "canceled": r1, "feedback_before_cancel": len(fb1),
            "preempted": r2, "preempting": r3, "stops": stops}  # fmt: skip


def scenario_budget(probe: Probe, args: dict) -> dict:
    """Continuous mode without an executor: one step per new frame until max_steps, then 'failed'."""
    stop = threading.Event()
    stream(probe, stop, 20.0)
    out = {"set": probe.set_param("wait_for_step_result", False)}
    feedback: list = []
    out["result"] = result_dict(probe.send_goal(args["instruction"], mode=1, max_steps=3, feedback=feedback))
    out["feedback_stamps"] = [convert.stamp_to_float(fb.step.action_goal.header.stamp) for _, fb in feedback]
    out["reset"] = probe.set_param("wait_for_step_result", True)
    stop.set()
    return out


def scenario_backend_error(probe: Probe, args: dict) -> dict:
    """A backend that cannot load aborts goals with its message; the node keeps serving after a fix."""
    stop = threading.Event()
    stream(probe, stop, 10.0)
    time.sleep(0.5)
    out = {"set_bad": probe.set_param(args["param"], args["bad"])}
    out["failed"] = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1))
    out["set_good"] = probe.set_param(args["param"], args["good"])
    out["recovered"] = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1))
    # a loaded backend that refuses a step: frames resized to a size the oracle does not render
    out["set_size"] = [probe.set_param("image_height", 64), probe.set_param("image_width", 64)]
    out["step_error"] = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1))
    out["reset_size"] = [probe.set_param("image_height", 0), probe.set_param("image_width", 0)]
    out["after"] = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1))
    stop.set()
    return out


def scenario_goal_images(probe: Probe, args: dict) -> dict:
    """Images carried in the goal are planned from (no camera needed); a bad one aborts the goal."""
    img = convert.image_msg(FACTORY, probe.frame(), 42.5, "goal_cam")
    good = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1, images=[img]))
    bad = convert.image_msg(FACTORY, probe.frame(), 1.0, "goal_cam")
    bad.encoding = "32FC1"
    failed = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1, images=[bad]))
    return {"good": good, "bad": failed}


def scenario_closed_loop(probe: Probe, args: dict) -> dict:
    """With the sim bridge running: a continuous goal until the task is done, all over ROS."""
    feedback: list = []
    # Reliable but volatile topics: results published before discovery matched us are lost, so wait
    # for the node's outputs AND the bridge's step_result publisher before the first goal.
    probe.wait_outputs()
    deadline = time.monotonic() + 30
    # Matched, not merely discovered: our step_result subscription must be connected to the bridge's
    # publisher (under load the match lagged the graph discovery and every StepResult was lost). Our
    # own result_pub matches it at once, so the bridge's is the second publisher.
    while probe.step_result_sub.get_publisher_count() < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the sim bridge's step_result publisher never matched our subscription")
        time.sleep(0.05)
    time.sleep(1.0)  # the publisher side matches us a moment later
    t0 = time.monotonic()
    handle = probe.send_goal(args["instruction"], mode=1, max_steps=args.get("max_steps", 30), feedback=feedback)
    result = result_dict(handle, timeout=args.get("timeout", 120))
    # The node finishes once it has the last StepResult; our copy travels separately: let it land.
    settle = time.monotonic() + 5
    while (not probe.step_results or not probe.step_results[-1][1].task_done) and time.monotonic() < settle:
        time.sleep(0.05)
    n_stats = len(probe.stats)
    settle = time.monotonic() + 5
    while len(probe.stats) <= n_stats and time.monotonic() < settle:  # counters after the goal ended
        time.sleep(0.05)
    return {"result": result, "feedback": [{**step_dict(fb.step), "image_pending": fb.image_pending} for _, fb in feedback],
            "wall_s": time.monotonic() - t0,
            "stats": probe.stats[-1] if probe.stats else None,
            "step_results": [{"goal_id": r.goal_id, "success": r.success, "reason": r.reason, "task_done": r.task_done}
                             for _, r in probe.step_results],
            "goals": [m.goal_id for _, m in probe.goals]}  # fmt: skip


def scenario_bridge_goals(probe: Probe, args: dict) -> dict:
    """Goals straight to the sim bridge (no guidance node): invalid ones fail with the skill's reason."""
    pub = probe.create_publisher(ActionGoal, "action_goal", RELIABLE)
    deadline = time.monotonic() + 30
    # (our own action_goal subscription matches at once: wait for the bridge's, by node name)
    while not any(i.node_name == "emu_sim_bridge" for i in probe.get_subscriptions_info_by_topic("/action_goal")) or \
            not any(i.node_name == "emu_sim_bridge" for i in probe.get_publishers_info_by_topic("/step_result")):
        if time.monotonic() > deadline:
            raise TimeoutError("sim bridge not discovered")
        time.sleep(0.05)
    time.sleep(0.3)
    frames: list = []
    objects: list = []
    probe.create_subscription(Image, "image_raw", lambda m: frames.append(m), qos_profile_sensor_data)
    probe.create_subscription(ObjectsInView, "objects_in_view", lambda m: objects.append(m), RELIABLE)
    for i, (verb, obj, target) in enumerate(args["goals"]):
        msg = ActionGoal(goal_id=f"g{i}", step_index=i, verb=verb, object=obj, target=target, status="ok")
        msg.target_pose.orientation.w = 1.0
        pub.publish(msg)
    deadline = time.monotonic() + 60
    while len(probe.step_results) < len(args["goals"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return {"results": [{"goal_id": r.goal_id, "success": r.success, "reason": r.reason, "task_done": r.task_done,
                         "duration_s": r.duration_s} for _, r in probe.step_results],
            "frames": len(frames), "frame_shape": [frames[-1].height, frames[-1].width, frames[-1].encoding] if frames else None,
            "objects": [{"stamp": key(convert.stamp_to_float(m.header.stamp)), "known": len(m.known), "names": list(m.names)} for m in objects],
            "frame_stamps": [key(convert.stamp_to_float(m.header.stamp)) for m in frames]}  # fmt: skip


def scenario_load(probe: Probe, args: dict) -> dict:
    """Frames at ``hz`` for ``seconds`` (every ``bad_every``-th invalid) while a continuous goal plans."""
    stop, counts = threading.Event(), {}
    stream(probe, stop, args["hz"], ("rgb8",), args["height"], args["width"], args["bad_every"], counts)
    time.sleep(1.0)
    feedback: list = []
    ages: list[float] = []
    latency: list[float] = []

    def on_feedback(fb: Any) -> None:
        if fb.feedback.image_pending:  # a streamed sentence: its complete step follows
            return
        now = time.monotonic()
        stamp = convert.stamp_to_float(fb.feedback.step.action_goal.header.stamp)
        with probe.lock:
            ages.append(probe.latest_stamp - stamp)  # how far behind the newest published frame
            if key(stamp) in probe.published:
                latency.append(now - probe.published[key(stamp)])
        feedback.append(now)

    # A goal whose steps the frames never confirm gives up after the bench's re-plan limit per step
    # (MonitorConfig.for_request): the load keeps a goal planning by sending the next one at once.
    goal = Guide.Goal(instruction=args["instruction"], mode=1, max_steps=1000)
    assert probe.client.wait_for_server(timeout_sec=20)
    probe.wait_outputs()
    deadline, goals = time.monotonic() + args["seconds"], 0
    while True:
        handle = wait(probe.client.send_goal_async(goal, feedback_callback=on_feedback), 20)
        goals += 1
        done = handle.get_result_async()
        while not done.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not done.done():  # the time is up while it plans: it is canceled below
            break
    stop.set()
    time.sleep(args.get("stats_wait", 2.0))
    if done.done():  # it gave up meanwhile (its re-plans need no new frame): cancel a fresh one, waiting for a frame
        handle = wait(probe.client.send_goal_async(goal), 20)
        done = handle.get_result_async()
        time.sleep(0.5)
    wait(handle.cancel_goal_async(), 20)
    result = wait(done, 30)
    return {"counts": counts, "steps": len(feedback), "goals": goals, "stats": probe.stats[-1] if probe.stats else None,
            "stats_series": [[s["received"], s["rejected"], s["dropped"]] for s in probe.stats],
            "frame_age_s": ages, "frame_in_to_feedback_s": latency, "final_status": result.result.status}  # fmt: skip


def scenario_goal(probe: Probe, args: dict) -> dict:
    """Only send a one-shot goal (frames come from someone else, e.g. the cyclonedds client)."""
    time.sleep(args.get("delay_s", 0.0))
    handle = probe.send_goal(args["instruction"], mode=0, max_steps=args.get("max_steps", 1))
    return {"result": result_dict(handle), "stats": probe.stats[-1] if probe.stats else None}


def scenario_serialize(probe: Probe, args: dict) -> dict:
    """rclpy (de)serialization of the same values/bytes rosbags produced, for cross-checking."""
    from rclpy.serialization import deserialize_message, serialize_message

    out: dict[str, Any] = {}
    for name, hexdata in args["rosbags_cdr"].items():
        cls = {"Plan": Plan, "Image": Image, "ActionGoal": ActionGoal}[name]
        msg = deserialize_message(bytes.fromhex(hexdata), cls)
        if name == "Plan":
            out[name] = {"instruction": msg.instruction, "model_id": msg.model_id, "status": msg.status,
                         "stamp": convert.stamp_to_float(msg.header.stamp), "steps": [step_dict(s) for s in msg.steps],
                         "image0": bytes(msg.steps[0].subgoal_image.data).hex()}  # fmt: skip
        elif name == "Image":
            out[name] = {"rgb": convert.image_to_rgb(msg).tobytes().hex(), "reserialized": serialize_message(msg).hex()}
        else:
            out[name] = {"verb": msg.verb, "object": msg.object, "target": msg.target, "has_target_pose": msg.has_target_pose,
                         "xyz": [msg.target_pose.position.x, msg.target_pose.position.y, msg.target_pose.position.z]}  # fmt: skip
    # and the other way: rclpy-serialized messages for rosbags to read
    img = convert.image_msg(FACTORY, np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), 9.5, "rclpy_cam")
    step = Plan(instruction="from rclpy", model_id="m", status="running")
    step.header = FACTORY.header(9.5, "rclpy_cam")
    out["from_rclpy"] = {"Image": serialize_message(img).hex(), "Plan": serialize_message(step).hex()}
    return out


def _diag(array: Any) -> dict:
    return {s.name: {"level": s.level[0] if isinstance(s.level, (bytes, bytearray)) else int(s.level), "message": s.message,
                     "values": {kv.key: kv.value for kv in s.values}} for s in array.status}  # fmt: skip


def _call(probe: Probe, client: Any, request: Any, timeout: float = 30.0) -> Any:
    assert client.wait_for_service(timeout_sec=timeout), client.srv_name
    return wait(client.call_async(request), timeout)


def scenario_lifecycle(probe: Probe, args: dict) -> dict:
    """A node started unconfigured (autostart false): a configure that fails (bad backend parameter)
    keeps it unconfigured with the reason on /diagnostics; fixed, configure + activate serve goals;
    deactivate refuses them."""
    diags: list = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.append(_diag(m)), RELIABLE)
    change = probe.create_client(ChangeState, f"{NODE}/change_state")
    get = probe.create_client(GetState, f"{NODE}/get_state")
    state = lambda: _call(probe, get, GetState.Request()).current_state.label  # noqa: E731
    transition = lambda t: bool(_call(probe, change, ChangeState.Request(transition=Transition(id=t)), 120).success)  # noqa: E731
    out: dict[str, Any] = {"initial": state()}
    out["configure_bad"] = transition(Transition.TRANSITION_CONFIGURE)
    out["after_bad"] = state()
    deadline = time.monotonic() + 10
    while not any("failed to load" in d.get("emu_guidance: backend", {}).get("message", "") for d in diags) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["diag_bad"] = next((d["emu_guidance: backend"] for d in reversed(diags) if "emu_guidance: backend" in d), None)
    out["set_good"] = probe.set_param(args["param"], args["good"])
    out["configure_good"] = transition(Transition.TRANSITION_CONFIGURE)
    out["after_configure"] = state()
    stop = threading.Event()
    handle = probe.send_goal(args["instruction"], mode=0, max_steps=1)
    out["inactive_goal_accepted"] = bool(handle.accepted)
    out["activate"] = transition(Transition.TRANSITION_ACTIVATE)
    out["after_activate"] = state()
    stream(probe, stop, 10.0)
    time.sleep(0.5)
    out["active_result"] = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1))
    out["deactivate"] = transition(Transition.TRANSITION_DEACTIVATE)
    out["after_deactivate"] = state()
    out["deactivated_goal_accepted"] = bool(probe.send_goal(args["instruction"], mode=0, max_steps=1).accepted)
    stop.set()
    time.sleep(1.5)
    out["diag_last"] = diags[-1] if diags else None
    return out


def scenario_observe(probe: Probe, args: dict) -> dict:
    """/diagnostics, the two image topics, and /plan latched for a subscriber that joins late."""
    diags: list = []
    subgoals: list = []
    annotated: list = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.append(_diag(m)), RELIABLE)
    probe.create_subscription(Image, f"{NODE}/subgoal_image", lambda m: subgoals.append(m), RELIABLE)
    probe.create_subscription(Image, f"{NODE}/annotated_image", lambda m: annotated.append(m), RELIABLE)
    stop = threading.Event()
    stream(probe, stop, 10.0)
    time.sleep(1.0)
    result = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1))
    time.sleep(args.get("stats_wait", 2.0))
    stop.set()
    late: list = []
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    probe.create_subscription(Plan, "plan", lambda m: late.append(m), latched)
    deadline = time.monotonic() + 10
    while not late and time.monotonic() < deadline:
        time.sleep(0.05)
    img = lambda m: [m.height, m.width, m.encoding, len(m.data), m.header.frame_id]  # noqa: E731
    return {"result": result, "diagnostics": diags[-1] if diags else None, "subgoal": [img(m) for m in subgoals],
            "annotated": [img(m) for m in annotated],
            "late_plan": {"n": len(late[-1].steps), "status": late[-1].status, "instruction": late[-1].instruction} if late else None}  # fmt: skip


def scenario_gate(probe: Probe, args: dict) -> dict:
    """The safety gate seen from outside: a disallowed verb in feedback (status unknown, the reason,
    gate_rejections), on /diagnostics; approval mode: the held goal on ~/pending_goal, a wrong id
    refused, approve -> published ok, deny -> rejected with the operator's reason."""
    diags: list = []
    pending: list = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.append(_diag(m)), RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    probe.create_subscription(ActionGoal, f"{NODE}/pending_goal", lambda m: pending.append(m), latched)
    approve = probe.create_client(ApproveGoal, f"{NODE}/approve_goal")
    stop = threading.Event()
    stream(probe, stop, 10.0)
    time.sleep(0.5)
    out: dict[str, Any] = {"set_verbs": probe.set_param("gate_verbs", "place,stack")}
    feedback: list = []
    out["rejected"] = result_dict(probe.send_goal(args["instruction"], mode=0, max_steps=1, feedback=feedback))
    out["rejected_feedback"] = [{"status": fb.step.action_goal.status, "reason": fb.step.action_goal.reason,
                                 "gate_rejections": fb.gate_rejections} for _, fb in feedback]  # fmt: skip
    out["reset_verbs"] = probe.set_param("gate_verbs", "pick,place,fold,stack,push,open,close")
    time.sleep(args.get("stats_wait", 2.0))
    out["diag_gate"] = next((d["emu_guidance: safety gate"] for d in reversed(diags) if "emu_guidance: safety gate" in d), None)
    out["set_approval"] = [probe.set_param("gate_require_approval", True), probe.set_param("gate_approval_timeout_s", 20.0)]
    decisions = []
    for decision in (True, False):
        n_goals, n_pending = len(probe.goals), len(pending)
        fb: list = []
        handle = probe.send_goal(args["instruction"], mode=0, max_steps=1, feedback=fb)
        deadline = time.monotonic() + 20
        while len(pending) <= n_pending and time.monotonic() < deadline:
            time.sleep(0.05)
        held = pending[-1]
        wrong = _call(probe, approve, ApproveGoal.Request(goal_id="no-such-goal", approve=True))
        right = _call(probe, approve, ApproveGoal.Request(goal_id=held.goal_id, approve=decision, reason="operator says no"))
        res = result_dict(handle)
        time.sleep(0.5)
        sent = [g for _, g in probe.goals[n_goals:]]
        decisions.append({"held": held.goal_id, "wrong": [wrong.accepted, wrong.message], "right": [right.accepted, right.message],
                          "result": res, "feedback": [[f.step.action_goal.status, f.step.action_goal.reason] for _, f in fb],
                          "sent": [[g.goal_id, g.status, g.reason] for g in sent]})  # fmt: skip
    out["decisions"] = decisions
    out["reset_approval"] = probe.set_param("gate_require_approval", False)
    stop.set()
    return out


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def main() -> None:
    scenario, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    rclpy.init()
    probe = Probe()
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(probe)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        time.sleep(args.get("discovery_s", 1.0))  # let discovery settle
        out = SCENARIOS[scenario](probe, args)
    finally:
        executor.shutdown(timeout_sec=1.0)
        probe.destroy_node()
        rclpy.try_shutdown()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
