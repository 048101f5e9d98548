"""Episode seed splits: training tools draw from TRAIN_SEEDS, evaluation from HELDOUT_SEEDS.

The two ranges are disjoint, so a model trained on recorded episodes is never scored on a scene
it has seen. Every tool that records, trains or benchmarks calls :func:`check_seed` (or uses
:func:`seeds_for`) instead of inventing its own numbers.
"""

from __future__ import annotations

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEEDS = range(1_000_000, 1_100_000)

SPLITS: dict[str, range] = {"train": TRAIN_SEEDS, "heldout": HELDOUT_SEEDS}


def split_range(split: str) -> range:
    """The seed range of ``split`` ("train" or "heldout")."""
    try:
        return SPLITS[split]
    except KeyError:
        raise ValueError(f"unknown seed split {split!r}; expected one of: {', '.join(SPLITS)}") from None


def check_seed(split: str, seed: int) -> int:
    """Return ``seed`` if it belongs to ``split``, else raise ValueError naming the valid range."""
    seeds = split_range(split)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if seed not in seeds:
        raise ValueError(
            f"seed {seed} is not in the {split} split: {split} seeds are [{seeds.start}, {seeds.stop})"
        )
    return seed


def seeds_for(split: str, count: int, offset: int = 0) -> list[int]:
    """``count`` consecutive seeds of ``split`` starting ``offset`` into its range."""
    seeds = split_range(split)
    if count < 0 or offset < 0:
        raise ValueError(f"count and offset must be >= 0, got count={count}, offset={offset}")
    if offset + count > len(seeds):
        raise ValueError(f"{split} split has {len(seeds)} seeds; asked for {count} from offset {offset}")
    return [seeds[offset + i] for i in range(count)]


def recording_seeds(explicit: tuple[int, ...] | list[int], count: int, offset: int = 0) -> tuple[int, ...]:
    """The TRAIN seeds a recorder runs: ``explicit`` ones (each checked), else ``count`` from
    ``offset``; ValueError for a held-out seed, a non-positive count or a repeated seed."""
    if explicit:
        seeds = tuple(check_seed("train", int(s)) for s in explicit)
    else:
        if count <= 0:
            raise ValueError(f"episodes per task must be positive, got {count}")
        seeds = tuple(seeds_for("train", count, offset))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"duplicate seeds: {seeds}")
    return seeds
