"""ROS 2 node processes in an isolated DDS graph, started from any Python (no rclpy here).

The over-ROS bench (``emu-guide bench --over-ros``) and the real-ROS test tier run the guidance
node, the sim bridge and a Guide client as separate processes that talk over real DDS. This
module finds a Python that can run them (``ros_python``), gives every graph its own domain id
with localhost-only discovery (``graph_env``), and starts / stops node processes (``RosProcess``).

Where the ROS Python comes from, first match wins:

1. this interpreter, when it imports rclpy and our emu_guidance interfaces (a robot host whose
   workspace is sourced, or ``source .ros_venv/ros_env.sh``);
2. ``.ros_venv`` in the checkout (or ``$ROS_VENV``), built by ``bash scripts/ros_venv.sh``: the
   ROS 2 Jazzy PyPI wheels plus our interfaces, its processes run with the paths it needs.

Otherwise ``RosUnavailable`` says, in one line, what to run.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "RosProcess", "RosPython", "RosUnavailable", "graph_env", "node_args", "random_domain_id",
           "ros_python", "ros_venv", "venv_problems"]  # fmt: skip

ROOT = Path(__file__).resolve().parents[1]  # the checkout (an installed copy has no .ros_venv beside it)


class RosUnavailable(RuntimeError):
    """No Python here can run ROS 2 nodes: the message says what to run."""


def ros_venv() -> Path:
    """The PyPI-wheel ROS venv of this checkout (``$ROS_VENV`` overrides)."""
    return Path(os.environ.get("ROS_VENV", ROOT / ".ros_venv"))


def venv_problems(venv: Path) -> list[str]:
    """What is missing from a ``scripts/ros_venv.sh`` venv (empty: ready)."""
    problems = []
    if not (venv / "bin" / "python").exists():
        problems.append(f"{venv / 'bin' / 'python'} missing")
    if not (venv / "interfaces").is_dir() or not (venv / ".emu_guidance_stamp").exists():
        problems.append("emu_guidance interfaces not built")
    return problems


@dataclass(frozen=True)
class RosPython:
    """A Python that runs ROS nodes, and the ROS venv it belongs to (None: this interpreter's own setup)."""

    python: Path
    venv: Path | None


def ros_python() -> RosPython:
    """The Python to run node processes with; ``RosUnavailable`` (one line) when there is none."""
    if importlib.util.find_spec("rclpy") is not None and importlib.util.find_spec("emu_guidance") is not None:
        return RosPython(Path(sys.executable), None)
    venv = ros_venv()
    problems = venv_problems(venv)
    if not problems:
        return RosPython(venv / "bin" / "python", venv)
    here = "rclpy is not importable here" if importlib.util.find_spec("rclpy") is None else \
        "the emu_guidance interfaces are not importable here"
    raise RosUnavailable(
        f"the ROS 2 environment is not available ({here}; {venv}: {'; '.join(problems)}): run `bash scripts/ros_venv.sh`"
        " (then this command runs its nodes with .ros_venv), or source a ROS 2 workspace with emu_guidance built"
    )


def graph_env(domain_id: int, log_dir: Path, venv: Path | None = None) -> dict[str, str]:
    """Environment of a ROS process in an isolated graph (own domain id, localhost discovery only).

    ``venv``: a ``scripts/ros_venv.sh`` venv (its interfaces and libraries on the paths); None: the
    current environment is already a ROS one (a sourced workspace)."""
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    if venv is not None:
        site = next((venv / "interfaces" / "lib").glob("python3*/site-packages"))
        env.update(
            AMENT_PREFIX_PATH=f"{venv / 'interfaces'}:{venv}",
            LD_LIBRARY_PATH=f"{venv / 'interfaces' / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":"),
            PYTHONPATH=f"{ROOT}:{site}",
            RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        )
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(log_dir / "ros_log"),
        EMU_GUIDE_RUNS=str(log_dir / "runs"),
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


def node_args(python: Path, module: str, params: dict) -> list[str]:
    """``python -m module --ros-args -p name:=value ...`` (booleans as true/false, '' quoted)."""
    args = [str(python), "-m", module, "--ros-args"]
    for name, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        text = text or "''"  # an empty string needs YAML quotes on the command line
        args += ["-p", f"{name}:={text}"]
    return args


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
