from __future__ import annotations

import pytest
from train_helpers import tiny_lm_config

from finetune_embodied import record as rec


@pytest.fixture
def tiny_lm(tmp_path):
    return lambda name="run", *ov: tiny_lm_config(tmp_path / name, *ov)


@pytest.fixture(scope="session")
def recorded(tmp_path_factory):
    """A tiny SortBlocks recording (3 episodes, 32 px) with perceptions and object pixels."""
    out = tmp_path_factory.mktemp("sort_blocks") / "ds"
    rec.record(rec.RecordConfig(out=str(out), tasks=("sort_blocks",), episodes_per_task=3, seed_offset=7,
                                resolution=32, mistake_rate=0.0), progress=False)
    return out
