"""Optional dependencies, declared once and required at the point of use.

Heavy or host-specific packages (rclpy, vllm, flash-attn, mujoco, peft, cyclonedds) are never
imported at module top level anywhere in the project. Code that needs one calls
``require("vllm")`` which either returns the imported module or raises ``MissingDependency``
with the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (pip extra or install hint, what it is needed for)
OPTIONAL_DEPENDENCIES: dict[str, tuple[str, str]] = {
    "rclpy": (
        "a ROS 2 install (robot host) or `bash scripts/ros_venv.sh` (PyPI ROS wheels)",
        "the ROS 2 guidance node",
    ),
    "vllm": ("pip install 'emu-guidance[gpu]' (needs a CUDA GPU)", "the vllm backend"),
    "flash_attn": ("pip install 'emu-guidance[gpu]' (needs a CUDA GPU)", "flash-attention kernels"),
    "mujoco": ("pip install 'emu-guidance[mujoco]'", "MuJoCo simulation"),
    "peft": ("pip install 'emu-guidance[train]'", "LoRA fine-tuning"),
    "cyclonedds": ("pip install cyclonedds", "the independent DDS client tests"),
    "yaml": ("pip install pyyaml", "reading YAML configs"),
}


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message says how to get it."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependency naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint, purpose = OPTIONAL_DEPENDENCIES.get(top, (f"pip install {top}", module))
        raise MissingDependency(
            f"{module!r} is needed for {purpose} but is not importable ({exc}). Install: {hint}"
        ) from exc


def available(module: str) -> bool:
    """True when ``module`` imports (used by tests to skip tiers with a reason)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
