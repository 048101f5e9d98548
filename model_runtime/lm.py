"""The language model: transformers' ``Qwen3ForCausalLM`` (Emu3.5's decoder block).

Qwen3's block is what Emu3.5 uses: RMSNorm, QK-norm, grouped-query attention, SwiGLU MLP, RoPE.
Emu3.5's published LM weights carry ``Qwen3ForCausalLM``'s parameter names, so one loading path
serves the tiny default model and the real 34B checkpoint alike.

- ``LMConfig``: the default model's architecture (sized for ~10 Hz guidance on a 2-core CPU).
- ``build_lm``: a randomly initialised model from an ``LMConfig`` (training starts here).
- ``load_lm`` / ``save_lm``: any Qwen3-compatible checkpoint directory (``config.json`` +
  ``model.safetensors`` or a sharded ``model.safetensors.index.json``), checked against a
  ``TokenLayout`` before any weight is read. The Emu3.5 release's own format is one of them:
  ``model_type "Emu3"`` / ``Emu3ForCausalLM`` (remote code in the release) is read as the Qwen3
  model it is (same block, same weight names), with the release config's defaults for fields it
  omits. Original Emu3 (v1) checkpoints share that ``model_type`` but not the block: refused, with
  the ``-hf`` conversions named.
- ``default_dtype``: bfloat16 on CUDA (what the release runs in; 34B in float32 is 136 GB),
  float32 on CPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from emu_guide.optional import available
from emu_guide.paths import read_json_object

if TYPE_CHECKING:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from model_runtime.layout import TokenLayout

__all__ = [
    "EMU3_RELEASE_DEFAULTS",
    "LMConfig",
    "LMLoadError",
    "build_lm",
    "count_params",
    "default_dtype",
    "lm_qwen3_config",
    "load_lm",
    "pick_attn_implementation",
    "save_lm",
]

# The Emu3.5 release's configuration class (``Emu3Config``, model_type "Emu3") and the defaults it
# applies to fields a config.json leaves out. Read from its published signature; note head_dim is
# a field (128), not hidden_size / num_attention_heads.
EMU3_RELEASE_DEFAULTS: dict[str, object] = {
    "vocab_size": 184_622,
    "hidden_size": 4096,
    "intermediate_size": 14_336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 9216,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "pad_token_id": 151_643,
    "bos_token_id": 151_849,
    "eos_token_id": 151_850,
    "tie_word_embeddings": False,
    "rope_theta": 1_000_000.0,
    "rope_scaling": None,
    "attention_dropout": 0.1,  # training only: eval mode runs attention without dropout
}
# Keys of a Qwen3 config that carry over from the release config; the rest (image token ids,
# image_area, pretraining_tp, auto_map...) belong to the release's generation code, not the block.
_QWEN3_KEYS = (*EMU3_RELEASE_DEFAULTS, "use_cache", "rope_parameters", "attention_bias", "sliding_window",
               "use_sliding_window", "max_window_layers", "layer_types")
EMU3_V1_VOCAB = 184_622  # original Emu3 (v1): Llama block, 32,768 visual codes
_EMU3_HF_HINT = (
    "use its transformers conversion (BAAI/Emu3-Gen-hf or BAAI/Emu3-Chat-hf, model_type 'emu3') with the emu3"
    " backend: load_backend('emu3', model_path=...)"
)


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


def default_dtype(device: str | torch.device = "cpu", device_map: object = None) -> torch.dtype:
    """bfloat16 when the weights go to a CUDA GPU (or are spread by ``device_map``), else float32."""
    if device_map is not None and device_map != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise LMLoadError(f"{path}: model directory does not exist")
    if not cfg_file.exists():
        raise LMLoadError(f"{cfg_file}: missing (not a transformers checkpoint directory)")
    return read_json_object(cfg_file, LMLoadError)


def lm_qwen3_config(path: str | Path) -> tuple[Qwen3Config, str]:
    """config.json of a checkpoint directory -> (the Qwen3Config it runs as, its format).

    Formats: ``"qwen3"`` (ours, or any Qwen3 checkpoint) and ``"emu3.5-release"`` (model_type
    ``"Emu3"``, architectures ``["Emu3ForCausalLM"]``: the published Emu3.5 weights). LMLoadError,
    naming the file, for anything else: a transformers Emu3 (``"emu3"``) or an original Emu3 (v1)
    checkpoint points at the emu3 backend and the ``-hf`` conversions.
    """
    from transformers import Qwen3Config

    path = Path(path)
    cfg_file = path / "config.json"
    raw = _read_config(path)
    model_type = raw.get("model_type")
    if model_type in ("qwen3", "emu3p5", "emu3_5"):
        raw = {k: v for k, v in raw.items() if k not in ("architectures", "transformers_version", "model_type")}
        fmt = "qwen3"
    elif model_type == "Emu3":
        archs = raw.get("architectures") or ["Emu3ForCausalLM"]
        if archs != ["Emu3ForCausalLM"]:
            raise LMLoadError(f"{cfg_file}: model_type 'Emu3' with architectures {archs}; expected ['Emu3ForCausalLM']")
        merged = {**EMU3_RELEASE_DEFAULTS, **raw}
        if int(merged["vocab_size"]) == EMU3_V1_VOCAB:
            raise LMLoadError(
                f"{cfg_file}: an original Emu3 (v1) checkpoint (vocabulary {EMU3_V1_VOCAB}, remote code, Llama block),"
                f" not Emu3.5: {_EMU3_HF_HINT}"
            )
        if merged["hidden_act"] != "silu":
            raise LMLoadError(f"{cfg_file}: hidden_act {merged['hidden_act']!r}; the Emu3.5 block is SwiGLU ('silu')")
        raw = {k: merged[k] for k in _QWEN3_KEYS if k in merged and merged[k] is not None}
        fmt = "emu3.5-release"
    elif model_type == "emu3":
        raise LMLoadError(f"{cfg_file}: a transformers Emu3 checkpoint (model_type 'emu3'), not a Qwen3 LM: {_EMU3_HF_HINT}")
    else:
        raise LMLoadError(f"{cfg_file}: model_type {model_type!r} is not Qwen3-compatible (nor the Emu3.5 release's 'Emu3')")
    try:
        return Qwen3Config(**raw), fmt
    except (TypeError, ValueError, KeyError) as exc:
        raise LMLoadError(f"{cfg_file}: not a valid Qwen3/Emu3.5 config ({type(exc).__name__}: {exc})") from None


def _weight_names(files: list[Path]) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names += list(handle.keys())
    return names


def load_lm(
    path: str | Path,
    layout: TokenLayout | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
) -> Qwen3ForCausalLM:
    """Load any Qwen3-compatible checkpoint directory (the default model, Emu3.5's release format).

    ``dtype=None``: ``default_dtype`` (bfloat16 on CUDA, float32 on CPU). ``device_map`` (e.g.
    ``"auto"``: layers spread over every visible GPU, as the release runs its 34B on 2x80 GB) is
    handed to transformers/accelerate and replaces ``device``.

    Checks, each with an LMLoadError naming the file: config.json present and a Qwen3 (or Emu3.5
    release) config; its vocabulary covers ``layout`` (a checkpoint for another layout is rejected
    before loading weights); every safetensors file present and readable; no missing weights.
    """
    from transformers import Qwen3ForCausalLM

    path = Path(path)
    cfg_file = path / "config.json"
    qcfg, fmt = lm_qwen3_config(path)
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
    files = _check_checkpoint_files(path)
    if fmt == "emu3.5-release" and not any(".self_attn.q_norm." in n for n in _weight_names(files)):
        raise LMLoadError(
            f"{path}: model_type 'Emu3' but the weights have no QK-norm (q_norm): an original Emu3 (v1) checkpoint,"
            f" not Emu3.5: {_EMU3_HF_HINT}"
        )
    if device_map is not None and not available("accelerate"):
        raise LMLoadError(f"device_map={device_map!r} needs the accelerate package (pip install accelerate)")
    attn = attn_implementation or pick_attn_implementation("cuda" if device_map not in (None, "cpu") else device)
    extra = {} if device_map is None else {"device_map": device_map}
    try:
        model, info = Qwen3ForCausalLM.from_pretrained(
            path, config=qcfg, dtype=dtype or default_dtype(device, device_map), attn_implementation=attn,
            output_loading_info=True, **extra,
        )  # fmt: skip
    except (OSError, RuntimeError, ValueError) as exc:
        raise LMLoadError(f"{path}: could not load weights ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    missing = [k for k in info.get("missing_keys", []) if not (qcfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing:
        raise LMLoadError(f"{path}: {len(missing)} weights missing from the checkpoint, e.g. {sorted(missing)[:3]}")
    mismatched = info.get("mismatched_keys", [])
    if mismatched:
        raise LMLoadError(f"{path}: weights with the wrong shape for config.json: {list(mismatched)[:3]}")
    model.checkpoint_format = fmt  # "qwen3" | "emu3.5-release" (backends report it)
    return (model if device_map is not None else model.to(device)).eval()
