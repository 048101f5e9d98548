"""Test tiers: plain tests run everywhere; `ros` needs the PyPI-wheel ROS venv; `gpu` needs CUDA.

Tiers whose requirement is missing skip with a reason (never silently pass).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("EMU_GUIDE_RUNS", os.path.join(os.path.dirname(__file__), "..", "runs", "tests"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
