"""Checkpoints: written atomically, verified on load, the last N kept.

A checkpoint is one directory ``<run>/checkpoints/step-00000123/``::

    model.safetensors    the weights (safetensors; tied tensors stored once per key)
    config.json          the train config, the model config, the stage, the step
    trainer_state.pt     optimizer, LR scheduler, step, RNG state, data position
    <stage files>        whatever the stage adds (tokenizer files: text vocab, tokenizer config...)
    manifest.json        size and sha256 of every file above, written last

It is first written to a temporary directory in the same folder, flushed to disk, then renamed
into place: a crash or a full disk leaves either the old set of checkpoints or the new one, never
a half-written ``step-*`` directory. Loading checks the manifest, so a truncated or edited file
is reported as corrupt instead of loading garbage.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CKPT_RE = re.compile(r"^step-(\d{8})$")
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or could not be written; the message names the path."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_weights(path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file from a state dict; shared/non-contiguous tensors are copied (tied embeddings)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for k, v in weights.items():
        t = v.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        seen.add(ptr)
        out[k] = t
    save_file(out, str(path), metadata=metadata)


def save_checkpoint(
    root: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    trainer_state: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; returns its directory.

    On any OSError (a full disk included) the temporary directory is removed, the previous
    checkpoints stay as they were, and CheckpointError says what happened.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        save_weights(tmp / WEIGHTS, weights, metadata={"step": str(step)})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        torch.save(trainer_state, tmp / STATE)
        if write_extra is not None:
            write_extra(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "step": step,
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for p in [*files, tmp / MANIFEST]:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): swap, then drop the old one
            old = root / f".old-step-{step:08d}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(root)
        why = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CheckpointError(
            f"could not write checkpoint step {step} under {str(root)!r}: {why} ({exc}); "
            f"previous checkpoint {'intact: ' + str(prev) if prev else 'none'}"
        ) from exc
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; returns the manifest or raises CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no {MANIFEST}: incomplete or not a checkpoint")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {MANIFEST} is corrupt ({exc})") from None
    for required in (WEIGHTS, CONFIG, STATE):
        if required not in files:
            raise CheckpointError(f"checkpoint {str(path)!r}: manifest lists no {required}")
    for name, info in files.items():
        p = path / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: file {name!r} is missing")
        if p.stat().st_size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: file {name!r} has {p.stat().st_size} bytes, manifest says {info['bytes']} (truncated?)"
            )
        if sha256_file(p) != info["sha256"]:
            raise CheckpointError(f"checkpoint {str(path)!r}: file {name!r} does not match its sha256 (corrupt)")
    return manifest


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"weights file {str(path)!r} cannot be read: {exc}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verified checkpoint -> {"weights", "config", "trainer_state", "path"}."""
    path = Path(path)
    verify_checkpoint(path)
    weights = load_weights(path / WEIGHTS)
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {CONFIG} is not valid JSON ({exc})") from None
    try:
        state = torch.load(path / STATE, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad pickle; all mean "corrupt"
        raise CheckpointError(f"checkpoint {str(path)!r}: {STATE} cannot be loaded ({exc})") from None
    return {"weights": weights, "config": config, "trainer_state": state, "path": path}


def resolve_resume(root: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: 'never' -> None, 'auto' -> latest under root (or None), else the path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    p = Path(resume)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint.resume: {resume!r} is not a checkpoint directory")
    return p
