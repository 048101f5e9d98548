"""What a perfect perception of a tabletop sim frame would say: the ground truth of the "perceive"
answers (recording targets, the perception benchmark, the report's "perceived vs truth").

Evaluation and training data only: it reads simulator state, so nothing in the model's path calls it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["visible_objects"]


def visible_objects(env: Any) -> dict:
    """``{"objects": [{"name", "pixel": [u, v]}], "holding": name | None, "holding_pixel": [u, v] | None}``
    of a TabletopEnv now (``holding_pixel``: where the held object is drawn, when the sim says).

    Objects: those with a colour and a kind (TableClear items, SortBlocks blocks) that lie on the
    table or on another object (a stack), unordered. Put-away items (in the rack, tray or bin) are
    not on the table; the held one is ``holding``.
    Parts of a deformable object (FoldCloth's sleeves, sides, bottom, top, halves: no colour or kind)
    are listed while a step of the plan is still to act on them, at their tracked point: the shirt's
    shape shows which flaps are still open, so a fold is seen done when its part leaves the list.
    """
    state = env.privileged_state()
    objects = state.get("objects", {})
    names = set(objects)
    to_do = {s.goal.object for s in env.ground_truth_plan()[int(state.get("steps_done", 0)):]}
    seen, holding, holding_pixel = [], None, None
    for name, o in objects.items():
        if not isinstance(o, dict):
            continue
        if "colour" not in o or "kind" not in o:
            if name in to_do and "pixel" in o:
                u, v = o["pixel"]
                seen.append({"name": name, "pixel": [float(u), float(v)]})
            continue
        loc = o.get("location")
        if loc == "gripper":
            holding = name
            if "pixel" in o:
                holding_pixel = [float(o["pixel"][0]), float(o["pixel"][1])]
        elif loc == "table" or loc in names:
            u, v = o["pixel"]
            seen.append({"name": name, "pixel": [float(u), float(v)]})
    if holding is None and state.get("held"):
        holding = str(state["held"])
    return {"objects": seen, "holding": holding, "holding_pixel": holding_pixel}
