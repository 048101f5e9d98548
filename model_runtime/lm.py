"""The language model: transformers' ``Qwen3ForCausalLM`` (Emu3.5's decoder block).

Qwen3's block is what Emu3.5 uses: RMSNorm, QK-norm, grouped-query attention, SwiGLU MLP, RoPE.
Emu3.5's published LM weights carry ``Qwen3ForCausalLM``'s parameter names, so one loading path
serves the tiny default model and the real 34B checkpoint alike.

- ``LMConfig``: the default model's architecture (sized for ~10 Hz guidance on a 2-core CPU).
- ``build_lm``: a randomly initialised model from an ``LMConfig`` (training starts here).
- ``load_lm`` / ``save_lm``: any Qwen3-compatible checkpoint directory (``config.json`` +
  ``model.safetensors`` or a sharded ``model.safetensors.index.json``), checked against a
  ``TokenLayout`` before any weight is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from emu_guide.optional import available

if TYPE_CHECKING:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from model_runtime.layout import TokenLayout

__all__ = ["LMConfig", "LMLoadError", "build_lm", "load_lm", "save_lm", "pick_attn_implementation", "count_params"]


class LMLoadError(ValueError):
    """A checkpoint directory is missing, corrupt, or does not fit the token layout."""


@dataclass
class LMConfig:
    """Architecture of the default guidance LM (a small Qwen3).

    Sized for the latency target: one next step (~10 text tokens one by one + a 12x12 subgoal
    image in K<=8 DiDA passes, prompt 200-450 tokens) in <= 100 ms on a 2-core CPU. The DiDA
    passes dominate: K x ~163 block tokens (~1300 token-passes) of compute, so FLOPs per token
    decide: at width 256 (3.1M block params) the image alone took ~110-185 ms here, at width 128
    (0.8M) ~50-85 ms. Single-token text steps are bounded by per-layer Python/dispatch overhead,
    which is why the model stays 4 layers deep. About 1M parameters with the compact vocabulary.
    """

    vocab_size: int = 1_332  # compact layout: 32 specials + ~300 words + 1000 FSQ codes (set from the layout)
    hidden_size: int = 128  # residual stream width (C)
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (GQA: 2 query heads per KV head; Emu3.5 uses 64/8)
    head_dim: int = 32  # per-head width; num_heads * head_dim == hidden_size here
    intermediate_size: int = 384  # SwiGLU hidden width (3x; Emu3.5 uses 5x)
    max_position_embeddings: int = 2_048  # longest prompt + answer the RoPE is trained for
    rope_theta: float = 10_000.0  # RoPE base
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True  # saves vocab*hidden params; Emu3.5 unties them
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LMConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LMConfig: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    def to_qwen3(self) -> Qwen3Config:
        from transformers import Qwen3Config

        return Qwen3Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
        )

    @classmethod
    def emu35_shaped(cls, vocab_size: int, hidden_size: int = 1024, num_layers: int = 12) -> LMConfig:
        """A scaled-down model with Emu3.5's ratios (64 q / 8 kv heads of 128 at width 5120, MLP 5x).

        Heads keep Emu3.5's 8:1 query:KV ratio and head width 128; the MLP keeps 5x. Used by the
        decode benchmark as a "larger random Emu3.5-shaped model".
        """
        head_dim = 128
        num_heads = max(8, hidden_size // head_dim)
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=max(1, num_heads // 8),
            head_dim=head_dim,
            intermediate_size=5 * hidden_size,
            max_position_embeddings=8_192,
            rope_theta=1_000_000.0,
            tie_word_embeddings=False,
        )


def pick_attn_implementation(device: str | torch.device) -> str:
    """flash_attention_2 on CUDA when flash_attn imports, else PyTorch SDPA (its own fused kernels)."""
    if torch.device(device).type == "cuda" and available("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def build_lm(config: LMConfig, attn_implementation: str = "sdpa", seed: int | None = 0) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3ForCausalLM with this architecture (eval mode)."""
    from transformers import Qwen3ForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    qcfg = config.to_qwen3()
    qcfg._attn_implementation = attn_implementation
    model = Qwen3ForCausalLM(qcfg)
    return model.eval()


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def save_lm(model: Qwen3ForCausalLM, path: str | Path, lm_config: LMConfig | None = None) -> Path:
    """Write a Qwen3 checkpoint directory (config.json + model.safetensors) and our lm_config.json."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if lm_config is not None:
        (path / "lm_config.json").write_text(json.dumps(asdict(lm_config), indent=2) + "\n")
    return path


def _check_checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory; LMLoadError naming a missing/corrupt file."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LMLoadError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
    elif single.exists():
        files = [single]
    else:
        raise LMLoadError(f"{path}: no model.safetensors or model.safetensors.index.json (weights missing)")
    for f in files:
        if not f.exists():
            raise LMLoadError(f"{f}: weight shard listed in the index is missing")
        try:  # reads the header only: catches truncated / non-safetensors files cheaply
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError (and OSError)
            raise LMLoadError(f"{f}: corrupt safetensors file ({exc})") from None
    return files


def load_lm(
    path: str | Path,
    layout: TokenLayout | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> Qwen3ForCausalLM:
    """Load any Qwen3-compatible checkpoint directory (the default model or Emu3.5's LM).

    Checks, each with an LMLoadError naming the file: config.json present and a Qwen3 config;
    its vocabulary covers ``layout`` (a checkpoint for another layout is rejected before loading
    weights); every safetensors file present and readable; no missing weights.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise LMLoadError(f"{path}: model directory does not exist")
    if not cfg_file.exists():
        raise LMLoadError(f"{cfg_file}: missing (not a transformers checkpoint directory)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise LMLoadError(f"{cfg_file}: invalid JSON ({exc})") from None
    if raw.get("model_type") not in ("qwen3", "emu3p5", "emu3_5"):
        raise LMLoadError(f"{cfg_file}: model_type {raw.get('model_type')!r} is not Qwen3-compatible")
    raw["model_type"] = "qwen3"
    qcfg = Qwen3Config(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    if layout is not None and qcfg.vocab_size < layout.vocab_size:
        raise LMLoadError(
            f"{cfg_file}: vocab_size {qcfg.vocab_size} is smaller than layout {layout.name!r} needs"
            f" ({layout.vocab_size}); wrong layout for this checkpoint?"
        )
    if layout is not None and layout.name == "compact" and qcfg.vocab_size != layout.vocab_size:
        raise LMLoadError(
            f"{cfg_file}: vocab_size {qcfg.vocab_size} != compact layout vocab_size {layout.vocab_size}"
            " (the text tokenizer or vision tokenizer does not match this LM)"
        )
    _check_checkpoint_files(path)
    attn = attn_implementation or pick_attn_implementation(device)
    try:
        model, info = Qwen3ForCausalLM.from_pretrained(
            path, config=qcfg, dtype=dtype or torch.float32, attn_implementation=attn, output_loading_info=True
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise LMLoadError(f"{path}: could not load weights ({exc})") from exc
    missing = [k for k in info.get("missing_keys", []) if not (qcfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing:
        raise LMLoadError(f"{path}: {len(missing)} weights missing from the checkpoint, e.g. {missing[:3]}")
    mismatched = info.get("mismatched_keys", [])
    if mismatched:
        raise LMLoadError(f"{path}: weights with the wrong shape for config.json: {list(mismatched)[:3]}")
    return model.to(device).eval()
