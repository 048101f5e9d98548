"""Sim bridge node: a ``sim_envs`` environment behind ROS topics, so the whole loop runs over ROS.

- publishes the env's camera as sensor_msgs/Image (rgb8) on ``camera_topic`` at ``camera_rate_hz``;
- executes each emu_guidance/ActionGoal from ``action_goal_topic`` with the scripted skill
  controller (``env.unwrapped.execute_skill``) and publishes an emu_guidance/StepResult on
  ``step_result_topic`` (success, reason, duration, whether the task is now complete), followed
  by a fresh camera frame;
- publishes what the simulator's colour detector sees in each published frame as
  emu_guidance/ObjectsInView on ``objects_topic`` (same stamp as the frame, sent just before it),
  so the guidance node can ground its steps as a robot's detector would let it.

Skill execution runs in its own callback group; the camera timer never renders while a skill
runs (the env is not thread-safe), it skips that tick instead.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from emu_guide.optional import require
from emu_ros import convert

PARAMETERS: dict[str, tuple[Any, str]] = {
    "env_id": ("sim_envs/TableClear-v0", "registered sim_envs environment id"),
    "seed": (0, "reset seed (the guidance node's sim_seed must match for the oracle backend)"),
    "camera_topic": ("image_raw", "sensor_msgs/Image output"),
    "camera_rate_hz": (10.0, "camera publishing rate (> 0)"),
    "frame_id": ("camera", "header.frame_id of published frames"),
    "action_goal_topic": ("action_goal", "emu_guidance/ActionGoal input"),
    "step_result_topic": ("step_result", "emu_guidance/StepResult output"),
    "objects_topic": ("objects_in_view", "emu_guidance/ObjectsInView output (the sim detector's names per frame); '' disables"),
}


def _make_node_class() -> type:
    require("rclpy")
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    require("emu_guidance")
    from emu_guidance.msg import ActionGoal as ActionGoalMsg
    from emu_guidance.msg import ObjectsInView as ObjectsInViewMsg
    from emu_guidance.msg import StepResult as StepResultMsg

    class SimBridgeNode(Node):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__("emu_sim_bridge", **kwargs)
            for name, (default, description) in PARAMETERS.items():
                self.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=True))
            rate = self.get_parameter("camera_rate_hz").value
            if not rate > 0:
                raise ValueError(f"camera_rate_hz must be > 0, got {rate}")
            if self.get_parameter("seed").value < 0:
                raise ValueError("seed must be >= 0")
            import gymnasium as gym

            import sim_envs  # noqa: F401  (registers the ids)

            env_id = self.get_parameter("env_id").value
            self.env = gym.make(env_id)
            self.env.reset(seed=self.get_parameter("seed").value)
            self.sim = self.env.unwrapped
            self.factory = convert.rclpy_factory()
            self.frame_id = self.get_parameter("frame_id").value
            self._env_lock = threading.Lock()
            self.executed = 0

            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.image_pub = self.create_publisher(Image, self.get_parameter("camera_topic").value, qos_profile_sensor_data)
            self.result_pub = self.create_publisher(StepResultMsg, self.get_parameter("step_result_topic").value, reliable)
            self.objects_pub = None
            self._seen: tuple[int, list[str]] | None = None  # (skills executed, names): the scene changes only then
            self._known = self.sim.name_vocabulary()  # the detector's class list: fixed for the env
            if self.get_parameter("objects_topic").value:
                from planner.grounding import ColorShapeDetector

                try:
                    self.detector = ColorShapeDetector.for_env(self.env)
                except ValueError as exc:  # e.g. cloth parts: no colour model, so nothing to publish
                    self.get_logger().info(f"no ObjectsInView for {self.get_parameter('env_id').value}: {exc}")
                else:
                    self.objects_pub = self.create_publisher(ObjectsInViewMsg, self.get_parameter("objects_topic").value, reliable)
            self.create_timer(1.0 / rate, self._publish_camera, callback_group=MutuallyExclusiveCallbackGroup())
            self.create_subscription(
                ActionGoalMsg, self.get_parameter("action_goal_topic").value, self._on_goal, reliable,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )  # fmt: skip
            self.get_logger().info(f"sim bridge ready: {env_id} seed {self.get_parameter('seed').value}: {self.sim.instruction!r}")

        def _publish_camera(self) -> None:
            if not self._env_lock.acquire(blocking=False):
                return  # a skill is running: skip this tick rather than render mid-step
            try:
                image = self.sim.render()
                names = self._detect(image)
            finally:
                self._env_lock.release()
            self._publish_frame(image, names)

        def _on_goal(self, msg: Any) -> None:
            goal = convert.action_goal_from_msg(msg)
            result = StepResultMsg(goal_id=msg.goal_id, step_index=msg.step_index)
            t0 = time.monotonic()
            with self._env_lock:
                if goal is None or goal.verb == "done":
                    result.success = bool(self.sim.task_success())
                    result.reason = "" if result.success else "'done' but the task is not complete"
                elif goal.status.value != "ok":
                    result.success, result.reason = False, f"goal not executable: {goal.status.value}: {goal.reason}"
                else:
                    try:
                        outcome = self.sim.execute_skill(goal)
                        result.success, result.reason = bool(outcome.success), outcome.reason
                    except ValueError as exc:  # SkillError (invalid verb/object/target) names the valid choices
                        result.success, result.reason = False, f"{type(exc).__name__}: {exc}"
                result.task_done = bool(self.sim.task_success())
                image = self.sim.render()
                self.executed += 1
                names = self._detect(image)
            result.duration_s = float(time.monotonic() - t0)
            result.header = self.factory.header(time.time(), self.frame_id)
            self.get_logger().info(f"step {msg.step_index} {msg.verb} {msg.object!r}: success={result.success} {result.reason}")
            self.result_pub.publish(result)
            self._publish_frame(image, names)

        def _detect(self, image: Any) -> list[str] | None:
            """Names the detector sees now (under the env lock), cached until the next skill runs."""
            if self.objects_pub is None:
                return None
            if self._seen is None or self._seen[0] != self.executed:
                found = self.detector.detect(image, self.sim.object_names())
                self._seen = (self.executed, sorted({d.name for d in found}))
            return self._seen[1]

        def _publish_frame(self, image: Any, names: list[str] | None) -> None:
            stamp = time.time()
            if names is not None:  # first, so the detection is there when the frame arrives
                self.objects_pub.publish(convert.objects_in_view_msg(self.factory, self._known, names, stamp, self.frame_id))
            self.image_pub.publish(convert.image_msg(self.factory, image, stamp, self.frame_id))

        def destroy_node(self) -> None:
            self.env.close()
            super().destroy_node()

    return SimBridgeNode


def main(args: list[str] | None = None) -> int:
    rclpy = require("rclpy")
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    node = None
    try:
        node = _make_node_class()()
        executor = MultiThreadedExecutor(num_threads=2)
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
