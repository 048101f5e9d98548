from __future__ import annotations

import pytest
from ds_helpers import make_episodes


@pytest.fixture
def episodes():
    return make_episodes()
