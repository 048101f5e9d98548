"""Gymnasium tabletop environments: TableClear, FoldCloth, SortBlocks (see docs/sim_envs.md).

Importing this package registers the environment ids in :data:`ENV_IDS`.
"""

from __future__ import annotations

import gymnasium as gym

from sim_envs.base import SkillError, TabletopEnv, Waypoint

# id -> (entry point, max_episode_steps)
_REGISTRY: dict[str, tuple[str, int]] = {
    "sim_envs/TableClear-v0": ("sim_envs.table_clear:TableClearEnv", 800),
    "sim_envs/FoldCloth-v0": ("sim_envs.fold_cloth:FoldClothEnv", 600),
    "sim_envs/SortBlocks-v0": ("sim_envs.sort_blocks:SortBlocksEnv", 800),
}
ENV_IDS: tuple[str, ...] = tuple(_REGISTRY)

for _id, (_entry, _max_steps) in _REGISTRY.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, max_episode_steps=_max_steps)

__all__ = ["ENV_IDS", "SkillError", "TabletopEnv", "Waypoint", "instruction_phrasings"]


def instruction_phrasings(env_id: str) -> list[str]:
    """How a task's instructions are written: its module's ``INSTRUCTIONS*`` paraphrases and
    ``*_TEMPLATES`` (with ``{placeholders}``, e.g. SortBlocks' colour-to-bin pairs), in order."""
    import importlib

    if env_id not in _REGISTRY:
        raise ValueError(f"unknown sim_envs id {env_id!r}; expected one of {list(_REGISTRY)}")
    module = importlib.import_module(_REGISTRY[env_id][0].split(":")[0])
    names = sorted(n for n in dir(module) if n.startswith("INSTRUCTIONS") or n.endswith("_TEMPLATES"))
    return [text for n in names for text in getattr(module, n) if isinstance(text, str)]
