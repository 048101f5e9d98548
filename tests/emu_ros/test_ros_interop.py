"""rosbags (no ROS) and real rclpy agree on our interfaces: same type hashes, same decoded values
from the same bytes, both directions; bags written without ROS decode in rclpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ros_tier import VENV, random_domain_id, require_ros_venv, ros_env, run_probe

from emu_guide.types import ActionGoal, Plan, PlanStep
from emu_ros import convert, interfaces, replay

pytestmark = pytest.mark.ros


def test_rihs01_type_hashes_match_rosidl():
    require_ros_venv()
    ts = interfaces.typestore()
    share = VENV / "interfaces" / "share" / "emu_guidance"
    compared = set()
    for name in (*interfaces.MESSAGES, "Guide"):
        kind = "action" if name == "Guide" else "msg"
        hashes = {h["type_name"]: h["hash_string"] for h in json.loads((share / kind / f"{name}.json").read_text())["type_hashes"]}
        for type_name, rosidl_hash in hashes.items():
            # our types and what they embed; the action's service wrappers (service_msgs) are not bag types
            if type_name in ts.types and not type_name.startswith("service_msgs/"):
                assert ts.hash_rihs01(type_name) == rosidl_hash, type_name
                compared.add(type_name)
    ours = {f"emu_guidance/msg/{m}" for m in interfaces.MESSAGES}
    ours |= {f"emu_guidance/action/Guide_{p}" for p in ("Goal", "Result", "Feedback", "FeedbackMessage")}
    assert ours <= compared and "sensor_msgs/msg/Image" in compared


def test_rosbags_and_rclpy_decode_the_same_bytes_alike(tmp_path):
    python = require_ros_venv()
    ts = interfaces.typestore()
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    goal = ActionGoal("place", "blue block", target="bin", target_pose=(0.25, -0.5, 0.125), gripper="open", goal_id="abc")
    plan = Plan("sort the blocks", [PlanStep(0, "pick up the blue block", subgoal_image=rgb, goal=goal)], model_id="m1", stamp=3.25)
    # the Plan bytes come out of a bag written without ROS, as a ROS 2 tool would read them
    bag = tmp_path / "bag"
    with replay.BagOut(bag, "mcap") as w:
        w.write("/plan", convert.plan_msg(w.factory, plan), 1)
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        plan_raw = next(raw for _, _, raw in reader.messages())
    factory = convert.rosbags_factory(ts)
    image_raw = ts.serialize_cdr(convert.image_msg(factory, rgb, 1.5, "cam"), "sensor_msgs/msg/Image")
    goal_raw = ts.serialize_cdr(convert.action_goal_msg(factory, goal), "emu_guidance/msg/ActionGoal")
    cdr = {"Plan": bytes(plan_raw).hex(), "Image": bytes(image_raw).hex(), "ActionGoal": bytes(goal_raw).hex()}
    out = run_probe(python, "serialize", {"rosbags_cdr": cdr, "discovery_s": 0.0}, ros_env(random_domain_id(), tmp_path))

    p = out["Plan"]
    assert (p["instruction"], p["model_id"], p["status"], p["stamp"]) == ("sort the blocks", "m1", "running", 3.25)
    assert p["steps"][0]["sentence"] == "pick up the blue block" and p["steps"][0]["object"] == "blue block"
    assert p["steps"][0]["image"] == [6, 5, "rgb8"] and bytes.fromhex(p["image0"]) == rgb.tobytes()
    assert bytes.fromhex(out["Image"]["rgb"]) == rgb.tobytes()
    assert bytes.fromhex(out["Image"]["reserialized"]) == bytes(image_raw)  # Image: byte-identical both ways
    g = out["ActionGoal"]
    assert (g["verb"], g["object"], g["target"], g["has_target_pose"]) == ("place", "blue block", "bin", True)
    assert g["xyz"] == pytest.approx([0.25, -0.5, 0.125])
    # and rclpy-serialized bytes decode in rosbags
    img = ts.deserialize_cdr(bytes.fromhex(out["from_rclpy"]["Image"]), "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(convert.image_to_rgb(img), np.arange(18, dtype=np.uint8).reshape(2, 3, 3))
    back = ts.deserialize_cdr(bytes.fromhex(out["from_rclpy"]["Plan"]), "emu_guidance/msg/Plan")
    assert (back.instruction, back.header.frame_id, convert.stamp_to_float(back.header.stamp)) == ("from rclpy", "rclpy_cam", 9.5)
