from __future__ import annotations

import pytest
from train_helpers import tiny_lm_config


@pytest.fixture
def tiny_lm(tmp_path):
    return lambda name="run", *ov: tiny_lm_config(tmp_path / name, *ov)
