"""Emu3's vision tokenizer through transformers' native ``Emu3VQVAE`` (transformers >= 4.48).

Real Emu3: 32,768 codes, downsample 8 (``channel_multiplier`` (1, 2, 2, 4)). A still image is
repeated ``temporal_downsample_factor`` times along time inside ``Emu3VQVAE.encode`` (Emu3 is a
video tokenizer) and the first decoded frame is the image. Pixels are in [-1, 1] (Emu3's image
processor: rescale 1/255, mean = std = 0.5).

Loads a directory saved with ``Emu3VQVAE.save_pretrained`` (config.json, model_type
``emu3_vqgan``) or a full Emu3 checkpoint (model_type ``emu3``, e.g. BAAI/Emu3-Gen-hf downloaded
beforehand): only its ``vqmodel.*`` tensors are read. Always local files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from model_runtime.tokenizers.base import VisionTokenizer, VisionTokenizerError, load_state_strict

__all__ = ["Emu3VQTokenizer"]


class Emu3VQTokenizer(VisionTokenizer):
    name = "emu3_vq"

    def __init__(self, model: Any, image_size: tuple[int, int] | None = None, device: str = "cpu") -> None:
        self.vq = model
        super().__init__(model, image_size, device)

    @classmethod
    def from_config(cls, config: Any, image_size: tuple[int, int] | None = None, seed: int = 0) -> Emu3VQTokenizer:
        """A randomly initialised model from an ``Emu3VQVAEConfig`` (tests, benchmarks)."""
        from transformers.models.emu3.modeling_emu3 import Emu3VQVAE

        torch.manual_seed(seed)
        return cls(Emu3VQVAE(config), image_size=image_size)

    @property
    def num_codes(self) -> int:
        return int(self.vq.config.codebook_size)

    @property
    def downsample(self) -> int:
        return int(self.vq.vision_spatial_factor)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        sizes = torch.tensor([[h, w]] * b)
        out = self.vq.encode(x.to(self.vq.dtype), sizes)
        return torch.stack(list(out.image_tokens))  # (B, h/8, w/8)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(codes)  # (B, 3, H, W)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        self.vq.save_pretrained(str(path))
        return path

    @classmethod
    def load(
        cls, directory: str | Path, device: str = "cpu", image_size: tuple[int, int] | None = None, **kwargs: Any
    ) -> Emu3VQTokenizer:
        """A saved ``Emu3VQVAE`` directory, or a full Emu3 checkpoint (its ``vqmodel.*`` weights only)."""
        from transformers.models.emu3.modeling_emu3 import Emu3VQVAE

        path = Path(directory)
        if not (path / "config.json").is_file():
            raise VisionTokenizerError(f"Emu3 VQ-VAE: no config.json in {path}")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise VisionTokenizerError(f"Emu3 VQ-VAE: no weights (*.safetensors) in {path}")
        try:
            doc = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise VisionTokenizerError(f"Emu3 VQ-VAE: {path / 'config.json'} is not valid JSON: {exc}") from exc
        if doc.get("model_type") == "emu3":
            return cls(_vq_from_full_checkpoint(path, doc), image_size=image_size, device=device)
        try:
            model, info = Emu3VQVAE.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
        except Exception as exc:  # transformers raises OSError/ValueError/RuntimeError for bad checkpoints
            raise VisionTokenizerError(f"Emu3 VQ-VAE: cannot load {path}: {exc}") from exc
        # transformers would silently initialise missing weights at random: refuse instead.
        bad = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "mismatched_keys", "unexpected_keys")}
        if any(bad.values()):
            detail = ", ".join(f"{k}: {len(v)} (e.g. {v[:3]})" for k, v in bad.items() if v)
            raise VisionTokenizerError(f"Emu3 VQ-VAE: weights in {path} do not match its config: {detail}")
        return cls(model, image_size=image_size, device=device)


_VQ_PREFIXES = ("vqmodel.", "model.vqmodel.")  # hub format (BAAI/Emu3-*-hf) and transformers' in-memory names


def _vq_from_full_checkpoint(path: Path, doc: dict) -> Any:
    """Build ``Emu3VQVAE`` from a full Emu3 checkpoint's ``vq_config`` and load only its tokenizer weights."""
    from safetensors import SafetensorError, safe_open
    from transformers import Emu3VQVAEConfig
    from transformers.models.emu3.modeling_emu3 import Emu3VQVAE

    if not isinstance(doc.get("vq_config"), dict):
        raise VisionTokenizerError(f"Emu3 checkpoint {path}: config.json has no vq_config")
    model = Emu3VQVAE(Emu3VQVAEConfig(**doc["vq_config"]))
    state: dict[str, torch.Tensor] = {}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise VisionTokenizerError(f"Emu3 checkpoint {path}: only safetensors weights are supported")
    for f in files:  # shards: read only the tokenizer's tensors
        try:
            with safe_open(str(f), "pt") as st:
                for key in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                    for prefix in _VQ_PREFIXES:
                        if key.startswith(prefix):
                            state[key[len(prefix) :]] = st.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise VisionTokenizerError(f"Emu3 checkpoint: cannot read {f}: {exc}") from exc
    if not state:
        raise VisionTokenizerError(f"Emu3 checkpoint {path}: no tensors named {' or '.join(_VQ_PREFIXES)}*")
    load_state_strict(model, state, str(path))
    return model.eval()
