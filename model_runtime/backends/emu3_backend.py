"""Emu3 (v1) on transformers' native classes: ``Emu3ForConditionalGeneration`` + its ``Emu3VQVAE``.

Point ``model_path`` at an Emu3 checkpoint directory in the transformers format (config.json
with ``model_type`` "emu3", safetensors weights, and the tokenizer files; an "-hf" conversion of
BAAI/Emu3-Gen has all three). The LM, the VQ-VAE inside it and the Qwen-based text tokenizer
are checked against the ``emu3`` layout, then decoding is ours: the same constraint grammar,
AR text, DiDA or AR image, CFG as for the default model (``LocalModelBackend``).

Emu3 was never DiDA-adapted: images decode AR by default, and DiDA (the released next-token
weights run in parallel mode, the starting point DiDA adaptation trains from) only with
``DecodeOptions(force_dida=True)``, or on a checkpoint marked adapted (``dida_adapted.json``).
Unset sampling options take Emu3's own settings (image top-k 2048, guidance 3, greedy text).

Original BAAI/Emu3-* checkpoints (remote code, ``model_type "Emu3"``, separate vision tokenizer)
are refused with the name of their ``-hf`` conversions, which transformers loads natively.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from emu_guide.paths import read_json_object
from model_runtime.backends.base import BackendError
from model_runtime.backends.torch_backend import LocalModelBackend
from model_runtime.layout import emu3

__all__ = ["Emu3Backend"]


class Emu3Backend(LocalModelBackend):
    name = "emu3"

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        image_size: tuple[int, int] = (256, 256),
        text_tokenizer_path: str | Path | None = None,
        attn_implementation: str | None = None,
        task: str = "vla",
        trust_remote_code: bool = False,
        device_map: str | dict | None = None,
        **unused: Any,
    ) -> None:
        from model_runtime.backends.base import OFFICIAL_DECODE_DEFAULTS
        from model_runtime.backends.torch_backend import dida_marker
        from model_runtime.lm import LMLoadError, _check_checkpoint_files, default_dtype, pick_attn_implementation
        from model_runtime.text_tokenizer import HFTextTokenizer, TextTokenizerError
        from model_runtime.tokenizers.base import VisionTokenizerError
        from model_runtime.tokenizers.emu3_vq import Emu3VQTokenizer

        if unused:
            raise BackendError(f"emu3 backend: unknown arguments {sorted(unused)}")
        if model_path is None:
            raise BackendError("emu3 backend: model_path is required (an Emu3 checkpoint in the transformers format)")
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise BackendError("emu3 backend: device 'cuda' asked for but no CUDA GPU is available")
        if device_map is not None and device_map != "cpu" and not torch.cuda.is_available():
            raise BackendError(f"emu3 backend: device_map={device_map!r} needs CUDA GPUs; this host has none")
        path = Path(model_path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise BackendError(f"emu3 backend: {cfg_file} missing (not a transformers checkpoint directory)")
        raw = read_json_object(cfg_file, BackendError, "emu3 backend: ")
        if raw.get("model_type") == "Emu3":
            raise BackendError(
                f"emu3 backend: {cfg_file} is an original BAAI Emu3 checkpoint (model_type 'Emu3', remote code,"
                " vision tokenizer separate); this backend loads transformers' native format: use the -hf conversion"
                " (BAAI/Emu3-Gen-hf or BAAI/Emu3-Chat-hf)"
            )
        if raw.get("model_type") != "emu3":
            raise BackendError(f"emu3 backend: {cfg_file} has model_type {raw.get('model_type')!r}, expected 'emu3'")
        self.layout = emu3()
        vocab = int(raw.get("text_config", {}).get("vocab_size", 0))
        if vocab < self.layout.vocab_size:
            raise BackendError(
                f"emu3 backend: {cfg_file}: text vocab_size {vocab} is smaller than the emu3 layout's"
                f" {self.layout.vocab_size} (wrong layout for this checkpoint)"
            )
        codebook = int(raw.get("vq_config", {}).get("codebook_size", 0))
        if codebook != self.layout.num_visual_codes:
            raise BackendError(
                f"emu3 backend: {cfg_file}: VQ codebook_size {codebook} != {self.layout.num_visual_codes} visual ids of"
                " the emu3 layout (wrong layout for this checkpoint)"
            )
        try:
            _check_checkpoint_files(path)
        except LMLoadError as exc:
            raise BackendError(f"emu3 backend: {exc}") from None
        from transformers import Emu3ForConditionalGeneration

        try:
            model, info = Emu3ForConditionalGeneration.from_pretrained(
                path, dtype=dtype or default_dtype(device, device_map), output_loading_info=True,
                attn_implementation=attn_implementation or pick_attn_implementation(
                    "cuda" if device_map not in (None, "cpu") else device),
                **({} if device_map is None else {"device_map": device_map}),
            )  # fmt: skip
        except (OSError, RuntimeError, ValueError) as exc:
            raise BackendError(f"emu3 backend: cannot load {path}: {exc}") from exc
        tied = {"lm_head.weight"} if model.config.get_text_config().tie_word_embeddings else set()
        missing = [k for k in info.get("missing_keys", []) if k not in tied]
        if missing or info.get("mismatched_keys"):
            raise BackendError(
                f"emu3 backend: {path}: weights missing {missing[:3]} / wrong shape {list(info.get('mismatched_keys', []))[:3]}"
            )
        self.lm = (model if device_map is not None else model.to(device)).eval()
        if device_map not in (None, "cpu"):
            device = str(self.lm.model.vqmodel.device)
        try:
            self.vision = Emu3VQTokenizer(self.lm.model.vqmodel, image_size=image_size, device=device)
        except VisionTokenizerError as exc:
            raise BackendError(f"emu3 backend: {exc}") from None
        try:
            self.text = HFTextTokenizer.load(text_tokenizer_path or path, trust_remote_code=trust_remote_code)
            self.text.check_layout(self.layout)
        except TextTokenizerError as exc:
            raise BackendError(f"emu3 backend: {exc}") from None
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.task = task
        self.model_id = str(path)
        self.dida_adapted = dida_marker(path)
        self.sampling_defaults = dict(OFFICIAL_DECODE_DEFAULTS["emu3"])
