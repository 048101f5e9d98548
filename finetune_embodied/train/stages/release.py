"""LM stages on an Emu3.5 release-format checkpoint (``layout: emu35``): DiDA-adapt the published weights.

``init_from`` is the release as downloaded (config.json with model_type "Emu3", sharded safetensors);
the stage trains it exactly as the compact stages train ours (same loop, same losses: the ``dida``
stage's noisy image copies and DiDA mask, or plain next-token), and differs only in what it reads:

- the model: ``init_from``'s own config and weights (``model_runtime.lm``: the release's block is
  Qwen3's, its weight names too); ``model:`` overrides are refused (the checkpoint decides);
- text: the release's tokenizer (``text_tokenizer``; remote code, so ``trust_remote_code: true``),
  the emu35 layout and the release's prompt template (``model_runtime.prompt``);
- frames: the release's IBQ vision tokenizer (``tokenizer``; default: found beside ``init_from``
  as downloaded, ``weights/Emu3.5-VisionTokenizer``) at ``data.image_size`` squared;
- checkpoints: with LoRA (``lora.enabled``) only the adapters are saved (the frozen base stays in
  ``init_from``; 34B of fp32 per checkpoint would be 136 GB). ``release_export`` merges them into a
  copy of the release that records the DiDA adaptation.

Under FSDP the ranks other than 0 build the model on the meta device; rank 0 loads the release's
weights and FSDP broadcasts them shard by shard (``finetune_embodied.train.distributed``), so host
memory holds one copy of the weights, not one per GPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_embodied.train.stages.lm_stages import DidaStage, LMStage

__all__ = ["ReleaseDidaStage", "ReleaseLMStage", "ReleaseParts", "load_release", "release_sequences"]

RELEASE_FILE = "release.json"  # in each checkpoint: where the base weights and tokenizers are


@dataclass
class ReleaseParts:
    """What a layout-emu35 stage reads from the release (checked before any weight is loaded)."""

    lm_dir: Path  # init_from: config.json + safetensors
    qwen3_config: Any  # transformers Qwen3Config the checkpoint runs as
    checkpoint_format: str  # "emu3.5-release" | "qwen3"
    text: Any  # model_runtime.text_tokenizer.HFTextTokenizer
    text_dir: Path
    vision: Any  # model_runtime.tokenizers.ibq.IBQTokenizer at data.image_size
    vision_dir: Path
    layout: Any  # model_runtime.layout.emu35()

    def describe(self) -> dict[str, Any]:
        return {"init_from": str(self.lm_dir.resolve()), "format": self.checkpoint_format,
                "text_tokenizer": str(self.text_dir.resolve()), "vision_tokenizer": str(self.vision_dir.resolve()),
                "image_size": list(self.vision.image_size)}  # fmt: skip


def load_release(cfg, device: str | torch.device = "cpu") -> ReleaseParts:
    """Check and load the release's config, text tokenizer and vision tokenizer; ValueError (one line)
    naming the directory and what is wrong."""
    from model_runtime.backends.base import BackendError
    from model_runtime.backends.torch_backend import find_vision_tokenizer
    from model_runtime.layout import emu35
    from model_runtime.lm import LMLoadError, lm_qwen3_config
    from model_runtime.text_tokenizer import TextTokenizerError, load_text_tokenizer
    from model_runtime.tokenizers import load_vision_tokenizer
    from model_runtime.tokenizers.base import VisionTokenizerError

    layout = emu35()
    lm_dir = Path(cfg.init_from)
    where = f"init_from {str(lm_dir)!r}"
    if cfg.model:
        raise ValueError(f"layout 'emu35': model overrides {cfg.model!r} are not allowed (the architecture is {where}'s config.json)")
    try:
        qcfg, fmt = lm_qwen3_config(lm_dir)
    except LMLoadError as exc:
        raise ValueError(f"{where} is not an Emu3.5 release-format checkpoint: {exc}") from None
    if qcfg.vocab_size < layout.vocab_size:
        raise ValueError(f"{where} is not an Emu3.5 release-format checkpoint: vocabulary {qcfg.vocab_size}, the emu35 "
                         f"layout needs {layout.vocab_size} (config.json model_type 'Emu3'; a compact-layout "
                         "checkpoint trains with layout: compact)")  # fmt: skip
    text_dir = Path(cfg.text_tokenizer or cfg.init_from)
    try:
        text = load_text_tokenizer(text_dir, trust_remote_code=cfg.trust_remote_code)
        if not hasattr(text, "check_layout"):
            raise TextTokenizerError(f"{text_dir} holds a word tokenizer, not the release's text tokenizer")
        text.check_layout(layout)
    except TextTokenizerError as exc:
        hint = " (training config: trust_remote_code: true)" if "trust_remote_code" in str(exc) else ""
        if "holds no text tokenizer" in str(exc) and not cfg.text_tokenizer:
            hint = " (the Emu3.5 release keeps it in its code repository, src/tokenizer_emu3_ibq: set text_tokenizer=<that dir>)"
        raise ValueError(f"text_tokenizer {str(text_dir)!r}: {exc}{hint}") from None
    size = cfg.data.image_size
    try:
        vision_dir = find_vision_tokenizer(lm_dir, cfg.tokenizer or None)
        vision = load_vision_tokenizer(vision_dir, device=str(device), image_size=(size, size))
    except (BackendError, VisionTokenizerError, OSError) as exc:
        raise ValueError(f"layout 'emu35' vision tokenizer: {exc}") from None
    if vision.num_codes != layout.num_visual_codes:
        raise ValueError(f"vision tokenizer {str(vision_dir)!r} has {vision.num_codes} codes, the emu35 layout "
                         f"{layout.num_visual_codes} (set tokenizer=<the release's Emu3.5-VisionTokenizer>)")  # fmt: skip
    return ReleaseParts(lm_dir, qcfg, fmt, text, text_dir, vision, vision_dir, layout)


def release_sequences(cfg, parts: ReleaseParts) -> tuple[list[Any], list[int], str]:
    """(training sequences, their episode index, data report) from the LeRobot dataset at ``data.path``,
    frames through the release's vision tokenizer, text through its tokenizer and the emu35 template."""
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.labelling import apply_labels
    from finetune_embodied.sequences import SequenceDataset
    from finetune_embodied.train.stages.lm_data import step_labels
    from finetune_embodied.train.stages.tokenizer_stage import announce_resize, camera_key

    d = cfg.data
    reader = open_dataset(d.path, on_error=d.on_error, first_episodes=d.first_episodes)
    key = camera_key(reader.camera_keys, d.camera, d.path)
    announce_resize(reader, key, d.image_size)
    labels, label_line = step_labels(cfg, reader, key)
    ds = SequenceDataset(
        apply_labels(reader.iter_episodes(load_images=True), labels), parts.layout, parts.text, parts.vision,
        camera_key=key, visual_loss_weight=d.visual_loss_weight, max_history=d.max_history,
        mid_samples_per_step=d.mid_samples_per_step, seed=cfg.seed, plan_sequences=d.plan_sequences,
    )  # fmt: skip
    report = [reader.report.summary()] if reader.report.count else []
    return list(ds.sequences), [s.episode_index for s in ds.samples], "\n".join(report + ([label_line] if label_line else []))


class ReleaseStageMixin:
    """What a layout-emu35 stage does differently from ``LMStage`` (put before it in the bases)."""

    cfg: Any
    info: Any

    @property
    def trainable_checkpoint(self) -> bool:
        """With LoRA a checkpoint holds the adapters only (the loop reads this)."""
        return bool(self.cfg.lora.enabled)

    def _load_data(self):
        self.release = load_release(self.cfg, self.info.device if self.info is not None else "cpu")
        sequences, groups, self.data_report = release_sequences(self.cfg, self.release)
        return self.release.text, self.release.layout, sequences, groups

    def _load_vision_tokenizer(self):
        return self.release.vision

    def build_model(self) -> torch.nn.Module:
        """The release's weights (rank 0 of FSDP, or every process otherwise); other FSDP ranks get an
        empty model on the meta device, filled by FSDP's broadcast from rank 0."""
        from transformers import Qwen3ForCausalLM

        from model_runtime.lm import load_lm, pick_attn_implementation

        attn = pick_attn_implementation(self.info.device)
        if self.info.strategy == "fsdp" and not self.info.is_main:
            qcfg = copy.deepcopy(self.release.qwen3_config)
            qcfg._attn_implementation = attn
            with torch.device("meta"):
                return Qwen3ForCausalLM(qcfg).train()
        # float32 master weights (the loop autocasts to bf16 on CUDA); checked: no missing weights.
        model = load_lm(self.release.lm_dir, self.release.layout, dtype=torch.float32, attn_implementation=attn)
        return model.train()

    def load_init(self, model: torch.nn.Module, path) -> None:
        """Nothing to do: ``build_model`` loaded ``init_from`` (the release) already."""

    def model_config(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"kind": "lm", "layout": self._layout_doc(), "release": self.release.describe(),
                "lm": self.release.qwen3_config.to_dict(), "lora": asdict(self.cfg.lora)}  # fmt: skip

    def _layout_doc(self) -> dict[str, Any]:
        return {"name": "emu35"}

    def write_files(self, directory: Path) -> None:
        """layout.json and release.json (paths of the base weights and tokenizers; nothing copied)."""
        import json

        from finetune_embodied.train.stages.lm_stages import LAYOUT_FILE

        (directory / LAYOUT_FILE).write_text(json.dumps(self._layout_doc(), indent=2) + "\n")
        (directory / RELEASE_FILE).write_text(json.dumps(self.release.describe(), indent=2) + "\n")


class ReleaseLMStage(ReleaseStageMixin, LMStage):
    """Next-token training of the release (e.g. on a robot's own data before DiDA)."""


class ReleaseDidaStage(ReleaseStageMixin, DidaStage):
    """DiDA adaptation of the release."""
