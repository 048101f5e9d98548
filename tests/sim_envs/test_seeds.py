from __future__ import annotations

import pytest

from sim_envs.seeds import HELDOUT_SEEDS, TRAIN_SEEDS, check_seed, seeds_for


def test_ranges_disjoint() -> None:
    assert TRAIN_SEEDS.stop <= HELDOUT_SEEDS.start or HELDOUT_SEEDS.stop <= TRAIN_SEEDS.start
    assert len(HELDOUT_SEEDS) >= 100


def test_check_seed() -> None:
    assert check_seed("train", 5) == 5
    assert check_seed("heldout", HELDOUT_SEEDS.start) == HELDOUT_SEEDS.start
    with pytest.raises(ValueError, match="not in the heldout split"):
        check_seed("heldout", 5)
    with pytest.raises(ValueError, match="not in the train split"):
        check_seed("train", HELDOUT_SEEDS.start)
    with pytest.raises(ValueError, match="unknown seed split"):
        check_seed("test", 5)
    with pytest.raises(ValueError, match="int"):
        check_seed("train", 1.5)  # type: ignore[arg-type]


def test_seeds_for() -> None:
    s = seeds_for("heldout", 3, offset=2)
    assert s == [HELDOUT_SEEDS.start + 2, HELDOUT_SEEDS.start + 3, HELDOUT_SEEDS.start + 4]
    with pytest.raises(ValueError):
        seeds_for("train", len(TRAIN_SEEDS) + 1)
