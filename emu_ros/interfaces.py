"""Our ``emu_guidance`` interface files, and a rosbags type store that knows them.

The ``.msg``/``.action`` files are the single source of truth: rclpy gets generated classes from
them (cmake/colcon), and bags written without ROS get rosbags types built from the same text, so
both sides agree on layout and RIHS01 type hashes.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE = "emu_guidance"
MESSAGES = ("ActionGoal", "PlanStep", "Plan", "StepResult", "ObjectsInView")  # dependency order
ACTIONS = ("Guide",)


def interface_root() -> Path:
    """Directory holding ``msg/`` and ``action/``: the source tree, else an installed share/emu_guidance."""
    source = Path(__file__).resolve().parents[1]
    if (source / "msg" / "Plan.msg").is_file():
        return source
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        share = Path(prefix) / "share" / PACKAGE
        if (share / "msg" / "Plan.msg").is_file():
            return share
    raise FileNotFoundError(f"cannot find the {PACKAGE} msg/ files in the source tree or on AMENT_PREFIX_PATH")


def interface_files() -> list[Path]:
    root = interface_root()
    return [root / "msg" / f"{m}.msg" for m in MESSAGES] + [root / "action" / f"{a}.action" for a in ACTIONS]


def split_action(text: str) -> tuple[str, str, str]:
    """``.action`` text -> (goal, result, feedback) message texts."""
    parts: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == "---":
            parts.append([])
        else:
            parts[-1].append(line)
    if len(parts) != 3:
        raise ValueError(f"an action needs exactly two '---' separators, found {len(parts) - 1}")
    goal, result, feedback = ("\n".join(p) + "\n" for p in parts)
    return goal, result, feedback


def type_definitions() -> dict[str, str]:
    """Full type name -> message text, for every message and action part of the package."""
    root = interface_root()
    defs = {f"{PACKAGE}/msg/{m}": (root / "msg" / f"{m}.msg").read_text() for m in MESSAGES}
    for action in ACTIONS:
        goal, result, feedback = split_action((root / "action" / f"{action}.action").read_text())
        defs[f"{PACKAGE}/action/{action}_Goal"] = goal
        defs[f"{PACKAGE}/action/{action}_Result"] = result
        defs[f"{PACKAGE}/action/{action}_Feedback"] = feedback
        # What the action's feedback topic carries (as rosidl generates it).
        defs[f"{PACKAGE}/action/{action}_FeedbackMessage"] = (
            f"unique_identifier_msgs/UUID goal_id\n{PACKAGE}/action/{action}_Feedback feedback\n"
        )
    return defs


@lru_cache(maxsize=4)
def typestore(store: str = "ROS2_JAZZY") -> Any:
    """A rosbags type store (``Stores.<store>``) with every emu_guidance type registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(getattr(Stores, store))
    types: dict[str, Any] = {}
    for name, text in type_definitions().items():
        types.update(get_types_from_msg(_qualify(text, name), name))
    ts.register(types)
    return ts


def _qualify(text: str, name: str) -> str:
    """Spell same-package field types in full (``PlanStep`` -> ``emu_guidance/msg/PlanStep``)."""
    local = set(MESSAGES)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            field_type, _, rest = stripped.partition(" ")
            base = field_type.split("[")[0]
            if base in local:
                line = f"{PACKAGE}/msg/{field_type} {rest}"
        lines.append(line)
    return "\n".join(lines) + "\n"
