"""Independent DDS client: plain cyclonedds (no rclpy, no ROS libraries) talking to the guidance node.

    python cyclone_client.py JSON_ARGS   (run with .ros_venv/dds_client/bin/python)

Publishes camera frames as ROS 2 sensor_msgs/Image on DDS topic ``rt/image_raw`` and reads the
node's Plan from ``rt/plan``, with the types written out here as IDL structs (ROS type ``pkg/msg/Name``
is DDS type ``pkg::msg::dds_::Name_``). Prints "RESULT <json>".
"""


import json
import os
import sys
import time
from dataclasses import dataclass

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import float32, float64, int32, sequence, uint8, uint32
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration


@dataclass
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@dataclass
class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time_
    frame_id: str


@dataclass
class Image_(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header_
    height: uint32
    width: uint32
    encoding: str
    is_bigendian: uint8
    step: uint32
    data: sequence[uint8]


@dataclass
class Point_(IdlStruct, typename="geometry_msgs::msg::dds_::Point_"):
    x: float64
    y: float64
    z: float64


@dataclass
class Quaternion_(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    x: float64
    y: float64
    z: float64
    w: float64


@dataclass
class Pose_(IdlStruct, typename="geometry_msgs::msg::dds_::Pose_"):
    position: Point_
    orientation: Quaternion_


@dataclass
class ActionGoal_(IdlStruct, typename="emu_guidance::msg::dds_::ActionGoal_"):
    header: Header_
    goal_id: str
    step_index: uint32
    verb: str
    object: str
    target: str
    has_target_pose: bool
    target_pose: Pose_
    gripper: str
    status: str
    confidence: float32
    reason: str


@dataclass
class PlanStep_(IdlStruct, typename="emu_guidance::msg::dds_::PlanStep_"):
    index: uint32
    sentence: str
    subgoal_image: Image_
    action_goal: ActionGoal_
    text_confidence: float32
    image_confidence: float32
    decode_mode: str
    latency_ms: float32
    is_final: bool


@dataclass
class Plan_(IdlStruct, typename="emu_guidance::msg::dds_::Plan_"):
    header: Header_
    instruction: str
    steps: sequence[PlanStep_]
    model_id: str
    status: str
    error: str


def main() -> None:
    args = json.loads(sys.argv[1])
    assert "rclpy" not in sys.modules
    dp = DomainParticipant(int(os.environ["ROS_DOMAIN_ID"]))
    image_topic = Topic(dp, "rt/image_raw", Image_)
    plan_topic = Topic(dp, "rt/plan", Plan_)
    writer = DataWriter(dp, image_topic, qos=Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5)))
    reader = DataReader(dp, plan_topic, qos=Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepLast(50)))
    h, w = args.get("height", 96), args.get("width", 96)
    pixels = [(x * 7 + y * 3) % 256 for y in range(h) for x in range(w) for _ in range(3)]
    plans, sent, t_end = [], 0, time.monotonic() + args["seconds"]
    while time.monotonic() < t_end:
        sent += 1
        header = Header_(stamp=Time_(sec=777, nanosec=sent), frame_id="cyclone_cam")
        writer.write(Image_(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=pixels))
        for sample in reader.take(N=50):
            plans.append({"instruction": sample.instruction, "status": sample.status, "model_id": sample.model_id,
                          "stamp": [sample.header.stamp.sec, sample.header.stamp.nanosec], "frame_id": sample.header.frame_id,
                          "sentences": [s.sentence for s in sample.steps], "verbs": [s.action_goal.verb for s in sample.steps],
                          "image": [[s.subgoal_image.height, s.subgoal_image.width, len(s.subgoal_image.data)] for s in sample.steps]})  # fmt: skip
        if plans and plans[-1]["status"] == "succeeded":
            break
        time.sleep(1.0 / args.get("hz", 10.0))
    print("RESULT " + json.dumps({"sent": sent, "plans": plans, "rclpy_loaded": "rclpy" in sys.modules}), flush=True)


if __name__ == "__main__":
    main()
