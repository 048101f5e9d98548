"""What a perfect perception of a tabletop sim frame would say: the ground truth of the "perceive"
answers (recording targets, the perception benchmark, the report's "perceived vs truth").

Evaluation and training data only: it reads simulator state, so nothing in the model's path calls it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["visible_objects"]


def visible_objects(env: Any) -> dict:
    """``{"objects": [{"name", "pixel": [u, v]}], "holding": name | None}`` of a TabletopEnv now.

    Objects: those with a colour and a kind (TableClear items, SortBlocks blocks; FoldCloth's cloth
    parts are not objects) that lie on the table or on another object (a stack), unordered. Put-away
    items (in the rack, tray or bin) are not on the table; the held one is ``holding``.
    """
    state = env.privileged_state()
    objects = state.get("objects", {})
    names = set(objects)
    seen, holding = [], None
    for name, o in objects.items():
        if not isinstance(o, dict) or "colour" not in o or "kind" not in o:
            continue
        loc = o.get("location")
        if loc == "gripper":
            holding = name
        elif loc == "table" or loc in names:
            u, v = o["pixel"]
            seen.append({"name": name, "pixel": [float(u), float(v)]})
    if holding is None and state.get("held"):
        holding = str(state["held"])
    return {"objects": seen, "holding": holding}
