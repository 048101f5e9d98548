"""Where things live. Generated artifacts go under ``runs/`` (git-ignored) unless told otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def artifacts_root() -> Path:
    """Root for generated artifacts (reports, datasets, checkpoints, bags): $EMU_GUIDE_RUNS or ./runs."""
    return Path(os.environ.get("EMU_GUIDE_RUNS", "runs")).resolve()


def shipped_model_dir() -> Path:
    """The default model shipped inside the package (weights tracked in git, < 20 MB in all)."""
    return Path(__file__).resolve().parent.parent / "model_runtime" / "default_model"


def read_json_object(path: Path, error: type[Exception] = ValueError, prefix: str = "") -> dict:
    """The JSON object in ``path``; ``error`` (a one-line message naming the file) when the file is
    missing, not valid JSON or not an object. ``prefix`` starts the message (e.g. "emu3 backend: ")."""
    if not path.is_file():
        raise error(f"{prefix}{path}: missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{prefix}{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{prefix}{path} must hold a JSON object")
    return doc
