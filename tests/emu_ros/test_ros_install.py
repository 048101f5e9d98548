"""The package as colcon installs it (scripts/ros_venv.sh builds CMakeLists.txt into .ros_venv/interfaces):
executables, launch, config, interface files and the Python packages; the installed node starts
from the install tree alone."""

from __future__ import annotations

import subprocess

import pytest
from ros_tier import VENV, RosProcess, node_args, random_domain_id, require_ros_venv, ros_env

pytestmark = pytest.mark.ros


def test_install_tree_layout():
    require_ros_venv()
    prefix = VENV / "interfaces"
    for rel in ("lib/emu_guidance/guidance_node", "lib/emu_guidance/sim_bridge_node"):
        exe = prefix / rel
        assert exe.is_file() and exe.stat().st_mode & 0o111, rel
        assert "from emu_ros." in exe.read_text()
    share = prefix / "share" / "emu_guidance"
    for rel in ("package.xml", "launch/guidance.launch.py", "launch/sim_guidance.launch.py", "config/guidance.yaml",
                "config/sim_guidance.yaml", "msg/Plan.msg", "msg/PlanStep.msg", "msg/ActionGoal.msg", "msg/StepResult.msg",
                "action/Guide.action"):  # fmt: skip
        assert (share / rel).is_file(), rel
    site = next((prefix / "lib").glob("python3*/site-packages"))
    for pkg in ("emu_guidance", "emu_guide", "model_runtime", "emu_ros", "planner", "sim_envs"):
        assert (site / pkg / "__init__.py").is_file(), pkg
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "emu_guidance").is_file()


def test_installed_node_runs_from_the_install_tree_alone(tmp_path):
    python = require_ros_venv()
    env = ros_env(random_domain_id(), tmp_path)
    site = next((VENV / "interfaces" / "lib").glob("python3*/site-packages"))
    env["PYTHONPATH"] = str(site)  # no source tree: what a robot host has after `colcon build`
    where = subprocess.run([str(python), "-c", "import emu_ros.guidance_node as g; print(g.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    exe = VENV / "interfaces" / "lib" / "emu_guidance" / "guidance_node"
    args = node_args(python, "x", {"backend": "oracle", "sim_env_id": "sim_envs/TableClear-v0"})
    node = RosProcess([str(python), str(exe), *args[3:]], env, tmp_path / "installed_node.log")
    try:
        node.wait_for_log("ready:")
        assert "backend 'oracle' loaded" in node.log.read_text()
    finally:
        assert node.stop() in (0, -2)
