"""The directory format of the small networks shipped beside the LM (step verifier, scene perceiver):
``config.json`` (the network's config dataclass) and ``model.safetensors``; one way to read and
write it, with one-line errors naming the directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_net_dir", "save_net_dir"]


def load_net_dir(directory: str | Path, config_cls: type, net_cls: type, what: str) -> torch.nn.Module:
    """``net_cls(config_cls(**config.json))`` with the directory's weights; ValueError naming ``what``
    and the directory when a file is missing or unreadable, or the weights do not fit the config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    try:
        cfg = config_cls(**json.loads((d / "config.json").read_text()))
        state = load_file(str(d / "model.safetensors"))
    except (OSError, ValueError, TypeError, SafetensorError) as exc:
        raise ValueError(f"{what} {d}: cannot load ({exc})") from None
    net = net_cls(cfg)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:  # names or shapes that are not this config's
        first = str(exc).strip().splitlines()[-1].strip()
        raise ValueError(f"{what} {d}: weights do not match its config ({first})") from None
    return net


def save_net_dir(directory: str | Path, cfg: Any, net: torch.nn.Module) -> None:
    """Write ``config.json`` (``cfg.to_dict()``) and ``model.safetensors``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "model.safetensors"))
