"""Pick the vision tokenizer a directory holds, from the files in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emu_guide.paths import read_json_object
from model_runtime.tokenizers.base import VisionTokenizer, VisionTokenizerError

__all__ = ["load_vision_tokenizer"]


def load_vision_tokenizer(directory: str | Path, device: str = "cpu", **kwargs: Any) -> VisionTokenizer:
    """Load the tokenizer in ``directory``.

    - ``config.yaml`` + ``model.ckpt`` -> Emu3.5 IBQ
    - ``config.json`` with ``"kind": "fsq"`` -> our FSQ default
    - ``config.json`` of a transformers Emu3 VQ-VAE (``emu3_vqgan``) or a full Emu3 model (``emu3``) -> Emu3
    """
    path = Path(directory)
    if not path.is_dir():
        raise VisionTokenizerError(f"vision tokenizer directory {path} does not exist")
    if (path / "config.yaml").is_file() or (path / "model.ckpt").is_file():
        from model_runtime.tokenizers.ibq import IBQTokenizer

        return IBQTokenizer.load(path, device=device, **kwargs)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise VisionTokenizerError(f"{path} holds no vision tokenizer (no config.json, no config.yaml + model.ckpt)")
    doc = read_json_object(cfg, VisionTokenizerError)
    if doc.get("kind") == "fsq":
        from model_runtime.tokenizers.fsq import FSQTokenizer

        return FSQTokenizer.load(path, device=device, **kwargs)
    if doc.get("model_type") in ("emu3_vqgan", "emu3"):
        from model_runtime.tokenizers.emu3_vq import Emu3VQTokenizer

        return Emu3VQTokenizer.load(path, device=device, **kwargs)
    raise VisionTokenizerError(
        f"{cfg}: unknown vision tokenizer (kind={doc.get('kind')!r}, model_type={doc.get('model_type')!r})"
    )
