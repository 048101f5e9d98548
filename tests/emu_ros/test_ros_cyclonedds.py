"""Independent client tier: a cyclonedds process (no rclpy, no ROS libraries) publishes camera
frames on the node's DDS topic and reads its Plan; an rclpy probe only sends the Guide goal."""

from __future__ import annotations

import json
import subprocess

import pytest
from ros_tier import (
    PROBES,
    ROOT,
    RosProcess,
    node_args,
    random_domain_id,
    require_dds_client,
    require_ros_venv,
    ros_env,
    run_probe,
)

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# Fast DDS with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST discovers over unicast on 127.0.0.1: Cyclone
# does the same (no multicast on lo), probing the well-known ports of participant indices 0..30.
CYCLONE_LOCALHOST = (
    "<CycloneDDS><Domain id='any'><General><Interfaces><NetworkInterface address='127.0.0.1'/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast></General><Discovery><ParticipantIndex>auto</ParticipantIndex>"
    "<MaxAutoParticipantIndex>30</MaxAutoParticipantIndex><Peers><Peer address='127.0.0.1'/></Peers>"
    "</Discovery></Domain></CycloneDDS>"
)


def test_cyclonedds_client_feeds_frames_and_reads_the_plan(tmp_path):
    python = require_ros_venv()
    dds_python = require_dds_client()
    env = ros_env(random_domain_id(), tmp_path)
    params = {"backend": "oracle", "sim_env_id": "sim_envs/TableClear-v0", "sim_seed": 1000000, "decode_mode": "oracle",
              "frame_timeout_s": 20.0, "compressed_topic": ""}  # fmt: skip
    node = RosProcess(node_args(python, "emu_ros.guidance_node", params), env, tmp_path / "node.log")
    client_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "LD_LIBRARY_PATH")}
    client_env["CYCLONEDDS_URI"] = CYCLONE_LOCALHOST
    try:
        node.wait_for_log("backend 'oracle' loaded")
        client = subprocess.Popen([str(dds_python), str(PROBES / "cyclone_client.py"), json.dumps({"seconds": 40, "hz": 10})],
                                  env=client_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        goal = run_probe(python, "goal", {"instruction": "clear the table", "delay_s": 1.0}, env, timeout=90)
        stdout, stderr = client.communicate(timeout=90)
    finally:
        node.stop()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, f"cyclonedds client gave no result:\n{stdout[-2000:]}\n{stderr[-2000:]}"
    out = json.loads(line[len("RESULT ") :])
    assert not out["rclpy_loaded"]
    assert goal["result"]["status"] == "succeeded", (goal, node.log.read_text()[-2000:])
    # the plan was made from a Cyclone frame (its stamp and frame id come back) and read by Cyclone
    assert out["plans"], f"no Plan reached the cyclonedds reader (sent {out['sent']} frames)"
    final = out["plans"][-1]
    assert final["status"] == "succeeded" and final["instruction"] == "clear the table"
    assert final["frame_id"] == "cyclone_cam" and final["stamp"][0] == 777 and 1 <= final["stamp"][1] <= out["sent"]
    assert final["sentences"] and final["sentences"][0].startswith("pick up") and final["verbs"][0] == "pick"
    assert final["image"][0] == [96, 96, 96 * 96 * 3]
    assert goal["result"]["steps"][0]["sentence"] == final["sentences"][0]
