"""Real-rclpy tier, the product as shipped: the guidance node with its default backend (torch, the
shipped default model) against the sim bridge over Fast DDS. Camera -> node -> the one step loop ->
model -> ActionGoal -> the bridge executes -> StepResult + new frame, until the task is done.

Every ROS participant is a .ros_venv subprocess; .ros_venv carries CPU torch (scripts/ros_venv.sh).
"""

from __future__ import annotations

import pytest
from ros_tier import RosProcess, node_args, random_domain_id, require_ros_venv, ros_env, run_probe

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ENV_ID = "sim_envs/TableClear-v0"
SEED = 1000000  # the first held-out seed, as `emu-guide demo`


def test_closed_loop_over_ros_with_the_shipped_model(tmp_path):
    python = require_ros_venv()
    env = ros_env(random_domain_id(), tmp_path)
    bridge = RosProcess(node_args(python, "emu_ros.sim_bridge_node", {"env_id": ENV_ID, "seed": SEED, "camera_rate_hz": 20.0}),
                        env, tmp_path / "bridge.log")  # fmt: skip
    # Defaults throughout: backend torch, model_path '' (the shipped model), the model's own decode
    # mode; the bridge's ObjectsInView grounds the steps (objects_topic default), as `emu-guide demo`.
    # the bridge's task check decides a final "done"; its detector reports objects, the fixed places are configured
    params = {"replan_rate_hz": 20.0, "stats_rate_hz": 2.0, "executor_knows_task_done": True, "gate_vocabulary": "tray,rack,bin"}
    guide = RosProcess(node_args(python, "emu_ros.guidance_node", params),
                       env, tmp_path / "node.log")  # fmt: skip
    try:
        bridge.wait_for_log("sim bridge ready")
        guide.wait_for_log("backend 'torch' loaded")
        out = run_probe(python, "closed_loop", {"instruction": "clear the table", "max_steps": 40, "timeout": 240},
                        env, timeout=300)  # fmt: skip
    finally:
        guide.stop()
        bridge.stop()
    log = guide.log.read_text()
    assert "failed to load" not in log, log[-2000:]
    res = out["result"]
    assert res["status"] == "succeeded", (res["error"], [s["sentence"] for s in res["steps"]], log[-2000:])
    results = out["step_results"]
    assert results and results[-1]["task_done"], results  # the simulator agrees: the table is clear
    steps = res["steps"]
    assert all(s["decode_mode"] == "dida" for s in steps)  # the shipped model is DiDA-adapted
    assert steps[-1]["is_final"] and sum(not s["is_final"] for s in steps) >= 12  # 6 items: pick + place each
    # Each step's sentence is streamed before its subgoal image: a feedback with image_pending, the
    # same index and sentence, no image and no goal yet, then the complete step (a final "done" has no image).
    feedback = out["feedback"]
    for i, fb in enumerate(feedback):
        if fb["image_pending"]:
            done = feedback[i + 1]
            assert not done["image_pending"] and (done["index"], done["sentence"]) == (fb["index"], fb["sentence"])
            assert fb["image"][:2] == [0, 0] and fb["verb"] == "" and done["image"][:2] != [0, 0]
    assert sum(fb["image_pending"] for fb in feedback) == sum(not fb["image_pending"] and not fb["is_final"] for fb in feedback)
    objects = out["stats"]["objects"]
    assert objects["received"] > 0 and objects["steps_grounded"] >= len(steps) - 1, objects
