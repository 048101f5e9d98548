"""Test tiers: plain tests run everywhere; `ros` needs the PyPI-wheel ROS venv; `gpu` needs CUDA.

Tiers whose requirement is missing skip with a reason (never silently pass).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("EMU_GUIDE_RUNS", os.path.join(os.path.dirname(__file__), "..", "runs", "tests"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one thread: the suite's models are tiny (per-op overhead, not FLOPs),
    and on a 2-core host two threads spin-wait against each other and the test's own subprocesses."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
