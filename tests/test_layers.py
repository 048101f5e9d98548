"""The folder tree reads top-down: no package imports one above it (docs/ARCHITECTURE.md).

camera -> emu_ros (ROS layer) -> planner (the step loop) -> model_runtime (the model) ; sim_envs
and emu_guide (shared types) sit at the bottom. finetune_embodied trains the runtime on recorded
sim data. Every import statement is checked, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "emu_guide": set(),  # cli.py dispatches through importlib strings, never an import statement
    "sim_envs": {"emu_guide"},
    "model_runtime": {"emu_guide"},
    "planner": {"emu_guide", "model_runtime", "sim_envs"},
    "finetune_embodied": {"emu_guide", "model_runtime", "sim_envs"},
    "emu_ros": {"emu_guide", "model_runtime", "planner", "sim_envs"},
}
PROJECT = set(ALLOWED)


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_runs_back_up_the_layers(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for other in imported_packages(path) - ALLOWED[package] - {package}:
            bad.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not bad, "\n".join(bad)


def test_only_the_ros_layer_imports_rclpy() -> None:
    offenders = []
    for package in sorted(set(ALLOWED) - {"emu_ros"}):
        for path in (ROOT / package).rglob("*.py"):
            if "rclpy" in {n.split(".")[0] for n in _all_import_names(path)}:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def _all_import_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
