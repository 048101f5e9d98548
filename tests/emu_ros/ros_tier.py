"""Helpers for the real-ROS test tiers: the .ros_venv (PyPI ROS 2 Jazzy wheels + our interfaces
built by scripts/ros_venv.sh), isolated DDS graphs, node and probe subprocesses.

pytest itself never imports rclpy: every ROS participant is a subprocess of .ros_venv/bin/python
(its .pth bootstrapper re-executes Python to set LD_LIBRARY_PATH). Without the venv these tiers
skip with the command that builds it; with CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("ROS_VENV", ROOT / ".ros_venv"))
PROBES = Path(__file__).resolve().parent / "probes"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_ros_venv() -> Path:
    """The venv's python; skip (or fail under CI) with the reason when it is not built."""
    python = VENV / "bin" / "python"
    problems = []
    if not python.exists():
        problems.append(f"{python} missing")
    if not (VENV / "interfaces").is_dir() or not (VENV / ".emu_guidance_stamp").exists():
        problems.append("emu_guidance interfaces not built")
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
    """Environment of a ROS process in an isolated graph (own domain id, localhost discovery only)."""
    site = next((VENV / "interfaces" / "lib").glob("python3*/site-packages"))
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env.update(
        AMENT_PREFIX_PATH=f"{VENV / 'interfaces'}:{VENV}",
        LD_LIBRARY_PATH=f"{VENV / 'interfaces' / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":"),
        PYTHONPATH=f"{ROOT}:{site}",
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(tmp / "ros_log"),
        EMU_GUIDE_RUNS=str(tmp / "runs"),
        PYTHONUNBUFFERED="1",
    )
    return env


_USED_DOMAINS: set[int] = set()


def random_domain_id() -> int:
    """A fresh domain id per graph: random (keeps parallel sessions on one host apart), never
    reused within this process (two graphs alive at once must not see each other)."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    free = [d for d in range(1, 102) if d not in _USED_DOMAINS]  # 0-101: the portable range
    domain = rng.choice(free)
    _USED_DOMAINS.add(domain)
    return domain


class RosProcess:
    """A ROS node subprocess with its log in a file; stopped with SIGINT (clean rclpy shutdown)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = open(log, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._file, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited ({self.proc.returncode}) before {text!r}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"no {text!r} in {self.log} after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def rss_mb(self) -> float:
        """Resident memory of the node process (after the bootstrapper's re-exec the pid is the same)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        return self.proc.returncode


def node_args(python: Path, module: str, params: dict) -> list[str]:
    args = [str(python), "-m", module, "--ros-args"]
    for name, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        text = text or "''"  # an empty string needs YAML quotes on the command line
        args += ["-p", f"{name}:={text}"]
    return args


def run_probe(python: Path, scenario: str, args: dict, env: dict[str, str], timeout: float = 120.0,
              script: Path = PROBES / "rclpy_probe.py") -> dict:  # fmt: skip
    """Run one probe scenario; returns its JSON result (the probe's output is in the error otherwise)."""
    proc = subprocess.run([str(python), str(script), scenario, json.dumps(args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"probe {scenario} gave no result (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

