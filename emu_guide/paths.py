"""Where things live. Generated artifacts go under ``runs/`` (git-ignored) unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def artifacts_root() -> Path:
    """Root for generated artifacts (reports, datasets, checkpoints, bags): $EMU_GUIDE_RUNS or ./runs."""
    return Path(os.environ.get("EMU_GUIDE_RUNS", "runs")).resolve()


def shipped_model_dir() -> Path:
    """The default model shipped inside the package (weights tracked in git, < 20 MB in all)."""
    return Path(__file__).resolve().parent.parent / "model_runtime" / "default_model"
