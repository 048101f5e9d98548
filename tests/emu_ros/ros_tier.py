"""Helpers for the real-ROS test tiers: the .ros_venv (PyPI ROS 2 Jazzy wheels + our interfaces
built by scripts/ros_venv.sh), isolated DDS graphs, node and probe subprocesses.

pytest itself never imports rclpy: every ROS participant is a subprocess of .ros_venv/bin/python
(its .pth bootstrapper re-executes Python to set LD_LIBRARY_PATH). Without the venv these tiers
skip with the command that builds it; with CI=true they fail instead. The process and graph
helpers are the product's own (emu_ros/graph.py, which the over-ROS bench runs on).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from emu_ros.graph import ROOT, RosProcess, graph_env, node_args, random_domain_id, ros_venv, venv_problems

__all__ = ["PROBES", "ROOT", "VENV", "RosProcess", "in_ci", "node_args", "random_domain_id", "require_dds_client",
           "require_ros_venv", "ros_env", "run_probe"]  # fmt: skip

VENV = ros_venv()
PROBES = Path(__file__).resolve().parent / "probes"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_ros_venv() -> Path:
    """The venv's python; skip (or fail under CI) with the reason when it is not built."""
    python = VENV / "bin" / "python"
    problems = venv_problems(VENV)
    if problems:
        reason = f"ROS 2 PyPI-wheel venv not ready ({'; '.join(problems)}): run `bash scripts/ros_venv.sh`"
        if in_ci():
            pytest.fail(reason + " (CI=true: this tier must run)")
        pytest.skip(reason)
    return python


def require_dds_client() -> Path:
    python = VENV / "dds_client" / "bin" / "python"
    if not python.exists():
        reason = f"cyclonedds client venv {python.parent.parent} missing: run `bash scripts/ros_venv.sh`"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def ros_env(domain_id: int, tmp: Path) -> dict[str, str]:
    """Environment of a .ros_venv process in an isolated graph (own domain id, localhost discovery only)."""
    return graph_env(domain_id, tmp, VENV)


def run_probe(python: Path, scenario: str, args: dict, env: dict[str, str], timeout: float = 120.0,
              script: Path = PROBES / "rclpy_probe.py") -> dict:  # fmt: skip
    """Run one probe scenario; returns its JSON result (the probe's output is in the error otherwise)."""
    proc = subprocess.run([str(python), str(script), scenario, json.dumps(args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"probe {scenario} gave no result (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

