"""Sim bridge node: a ``sim_envs`` environment behind ROS topics, so the whole loop runs over ROS.

- publishes the env's camera as sensor_msgs/Image (rgb8) on ``camera_topic`` at ``camera_rate_hz``;
- executes each emu_guidance/ActionGoal from ``action_goal_topic`` with the scripted skill
  controller (``env.unwrapped.execute_skill``) and publishes an emu_guidance/StepResult on
  ``step_result_topic`` (success, reason, duration, whether the task is now complete), followed
  by a fresh camera frame;
- an ActionGoal with verb "stop" (the guidance node's cancel/preemption signal) is logged and
  acknowledged with nothing else: skills here run to completion synchronously, so there is no
  motion to halt and no StepResult is sent for it;
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

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from emu_guide.optional import require
from emu_ros import convert
from emu_ros.node_common import ParameterError, declare_parameters, main_for
from emu_ros.node_parts import SIM_BRIDGE_PARAMETERS as PARAMETERS

require("emu_guidance")  # the generated interfaces (colcon build / scripts/ros_venv.sh)
from emu_guidance.msg import ActionGoal as ActionGoalMsg  # noqa: E402
from emu_guidance.msg import ObjectsInView as ObjectsInViewMsg  # noqa: E402
from emu_guidance.msg import StepResult as StepResultMsg  # noqa: E402

__all__ = ["PARAMETERS", "SimBridgeNode", "main"]


class SimBridgeNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("emu_sim_bridge", **kwargs)
        declare_parameters(self, PARAMETERS)  # ParameterError (one line) on a bad start-up value
        rate = self.get_parameter("camera_rate_hz").value
        import gymnasium as gym

        import sim_envs  # noqa: F401  (registers the ids)

        env_id = self.get_parameter("env_id").value
        try:
            self.env = gym.make(env_id)
        except Exception as exc:  # an unknown id, a broken env: one line, exit 2
            raise ParameterError(f"parameter 'env_id' = {env_id!r}: {' '.join(str(exc).split())[:200]}") from None
        self.env.reset(seed=self.get_parameter("seed").value)
        self.sim = self.env.unwrapped
        self.factory = convert.rclpy_factory()
        self.frame_id = self.get_parameter("frame_id").value
        self._env_lock = threading.Lock()
        self.executed = 0
        self.stops = 0

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
        if msg.verb == ActionGoalMsg.VERB_STOP:  # skills run to completion here: nothing to halt, no StepResult
            self.get_logger().info(f"stop received: {msg.reason}")
            self.stops += 1
            return
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
                    # The simulator's step checker has the last word, as in process (planner.executor.SimExecutor):
                    # a skill that ran but left the step's effect unmet is a failure.
                    if result.success and hasattr(self.sim, "check_step") and not self.sim.check_step(goal):
                        result.success, result.reason = False, "the skill ran but the simulator's checker says the step is not done"
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


def main(args: list[str] | None = None) -> int:
    return main_for(SimBridgeNode, args, "emu_sim_bridge node", num_threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
