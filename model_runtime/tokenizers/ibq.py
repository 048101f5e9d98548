"""Emu3.5's vision tokenizer (IBQ, index backpropagation quantisation), our own implementation.

Loads the published checkpoint layout: a directory with

- ``config.yaml``: ``ddconfig`` (the conv encoder/decoder: ``ch``, ``ch_mult``, ``num_res_blocks``,
  ``attn_resolutions``, ``z_channels``, ``resolution``, ``in_channels``, ``out_ch``, ``double_z``,
  ``dropout``), ``n_embed`` (codebook size), ``embed_dim`` (code dim), and training-only keys
  (``beta``, ``use_entropy_loss``, ...) which inference ignores;
- ``model.ckpt``: a torch checkpoint, the state dict itself or ``{"state_dict": ...}``, with the
  parameter names of the reference model (``encoder.down.0.block.0.norm1.weight``, ...,
  ``quantize.embedding.weight``, ``quant_conv``, ``post_quant_conv``, ``decoder.up.*``).

Real Emu3.5: ch 256, ch_mult (1, 1, 2, 2, 4) -> downsample 16, 4 res blocks, attention at 16,
z/code dim 256, 131,072 codes. Pixels in [-1, 1].

Quantisation at inference (what IBQ trains for): the code of a cell is the argmax over the
codebook of the dot product between the projected latent and each entry (optionally both
l2-normalised); decoding looks the entry up, then ``post_quant_conv`` and the decoder.

Shapes, batch B, image H x W, f = 2 ** (len(ch_mult) - 1):
  x (B, 3, H, W) -> encoder -> (B, z_channels, H/f, W/f) -> quant_conv -> (B, embed_dim, H/f, W/f)
  -> logits (B, n_embed, H/f, W/f) -> codes (B, H/f, W/f)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_runtime.tokenizers.base import VisionTokenizer, VisionTokenizerError, load_state_strict

__all__ = ["IBQ", "IBQConfig", "IBQTokenizer"]

CONFIG_FILE = "config.yaml"
CKPT_FILE = "model.ckpt"
_DD_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution", "in_channels", "out_ch")
_TRAINING_ONLY = (
    "beta", "use_entropy_loss", "cosine_similarity", "entropy_temperature", "sample_minimization_weight",
    "batch_maximization_weight", "remap", "sane_index_shape", "lossconfig", "ckpt_path", "ignore_keys",
)  # fmt: skip


@dataclass
class IBQConfig:
    ch: int = 256  # base conv width
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # width multiplier per resolution level; downsample 2**(len-1)
    num_res_blocks: int = 4  # res blocks per level (decoder: one more)
    attn_resolutions: tuple[int, ...] = (16,)  # feature-map sizes (relative to `resolution`) with self-attention
    z_channels: int = 256  # encoder output channels
    resolution: int = 256  # nominal training resolution; only decides where attention sits
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = False  # must be False for IBQ (no posterior variance)
    dropout: float = 0.0
    n_embed: int = 131_072  # codebook size
    embed_dim: int = 256  # code dimension
    l2_normalize: bool = False  # compare l2-normalised latents and entries when choosing codes
    ignored: dict[str, Any] = field(default_factory=dict)  # training-only keys read from config.yaml

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_yaml_dict(cls, doc: Any, source: str = CONFIG_FILE) -> IBQConfig:
        if not isinstance(doc, dict):
            raise VisionTokenizerError(f"IBQ: {source} must be a mapping, got {type(doc).__name__}")
        dd = doc.get("ddconfig")
        if not isinstance(dd, dict):
            raise VisionTokenizerError(f"IBQ: {source} has no 'ddconfig' mapping")
        missing = [k for k in _DD_KEYS if k not in dd] + [k for k in ("n_embed", "embed_dim") if k not in doc]
        if missing:
            raise VisionTokenizerError(f"IBQ: {source} is missing keys {missing}")
        if dd.get("double_z", False):
            raise VisionTokenizerError(f"IBQ: {source} sets ddconfig.double_z, which IBQ does not use")
        ignored = {k: v for k, v in doc.items() if k not in ("ddconfig", "n_embed", "embed_dim", "l2_normalize")}
        try:
            cfg = cls(
                ch=int(dd["ch"]),
                ch_mult=tuple(int(m) for m in dd["ch_mult"]),
                num_res_blocks=int(dd["num_res_blocks"]),
                attn_resolutions=tuple(int(r) for r in dd["attn_resolutions"]),
                z_channels=int(dd["z_channels"]),
                resolution=int(dd["resolution"]),
                in_channels=int(dd["in_channels"]),
                out_ch=int(dd["out_ch"]),
                dropout=float(dd.get("dropout", 0.0)),
                n_embed=int(doc["n_embed"]),
                embed_dim=int(doc["embed_dim"]),
                l2_normalize=bool(doc.get("l2_normalize", False)),
                ignored=ignored,
            )
        except (TypeError, ValueError) as exc:
            raise VisionTokenizerError(f"IBQ: bad value in {source}: {exc}") from exc
        if cfg.ch % 32 or cfg.n_embed <= 0 or cfg.embed_dim <= 0 or not cfg.ch_mult:
            raise VisionTokenizerError(f"IBQ: {source}: ch must be a multiple of 32 (GroupNorm), n_embed/embed_dim > 0")
        return cfg

    def to_yaml_dict(self) -> dict[str, Any]:
        dd = {
            "double_z": self.double_z, "z_channels": self.z_channels, "resolution": self.resolution,
            "in_channels": self.in_channels, "out_ch": self.out_ch, "ch": self.ch, "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks, "attn_resolutions": list(self.attn_resolutions),
            "dropout": self.dropout,
        }  # fmt: skip
        return {"ddconfig": dd, "n_embed": self.n_embed, "embed_dim": self.embed_dim, "l2_normalize": self.l2_normalize}


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all cells, 1x1-conv projections."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (p(y).reshape(b, 1, c, h * w).transpose(2, 3) for p in (self.q, self.k, self.v))  # (B, 1, hw, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, hw, C)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: (H, W) -> (H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(ch, ch, dropout)
    mid.attn_1 = AttnBlock(ch)
    mid.block_2 = ResnetBlock(ch, ch, dropout)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: IBQConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res = cfg.resolution
        in_mult = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            c_in = cfg.ch * in_mult[level]
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(c_in, cfg.ch * mult, cfg.dropout))
                c_in = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(c_in))
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(c_in)
                res //= 2
            self.down.append(stage)
        self.mid = _mid(c_in, cfg.dropout)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: IBQConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        c_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _mid(c_in, cfg.dropout)
        stages: list[nn.Module] = []
        for level in reversed(range(n)):  # built coarse to fine, stored fine to coarse (reference order)
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(c_in, cfg.ch * cfg.ch_mult[level], cfg.dropout))
                c_in = cfg.ch * cfg.ch_mult[level]
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(c_in))
            if level != 0:
                stage.upsample = Upsample(c_in)
                res *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantize(nn.Module):
    """The codebook; ``embedding.weight`` is (n_embed, embed_dim)."""

    def __init__(self, n_embed: int, embed_dim: int, l2_normalize: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.l2_normalize = l2_normalize

    def codes(self, z: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """z (B, D, h, w) -> codes (B, h, w): argmax of z . e over entries, in chunks of the codebook."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
        emb = self.embedding.weight
        if self.l2_normalize:
            flat, emb = F.normalize(flat, dim=1), F.normalize(emb, dim=1)
        best_val = torch.full((flat.shape[0],), -float("inf"), device=z.device, dtype=flat.dtype)
        best_idx = torch.zeros(flat.shape[0], dtype=torch.int64, device=z.device)
        for start in range(0, emb.shape[0], chunk):  # 131,072 entries: never build the full (N, n) logits
            val, idx = (flat @ emb[start : start + chunk].T).max(dim=1)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + start, best_idx)
        return best_idx.view(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> (B, D, h, w) codebook entries (the reference's decode path)."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


class IBQ(nn.Module):
    """Parameter names match the published Emu3.5 tokenizer checkpoint."""

    def __init__(self, cfg: IBQConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = Quantize(cfg.n_embed, cfg.embed_dim, cfg.l2_normalize)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize.codes(self.quant_conv(self.encoder(x)))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))


class IBQTokenizer(VisionTokenizer):
    name = "ibq"

    def __init__(self, model: IBQ, image_size: tuple[int, int] | None = None, device: str = "cpu") -> None:
        self.config = model.config
        super().__init__(model, image_size, device)

    @classmethod
    def from_config(cls, config: IBQConfig, image_size: tuple[int, int] | None = None, seed: int = 0) -> IBQTokenizer:
        """A randomly initialised model (tests, benchmarks)."""
        torch.manual_seed(seed)
        return cls(IBQ(config), image_size=image_size)

    @property
    def num_codes(self) -> int:
        return self.config.n_embed

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_codes(x)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode_codes(codes)

    def save(self, directory: str | Path) -> Path:
        """Write the published layout: config.yaml + model.ckpt ({"state_dict": ...})."""
        import yaml

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(yaml.safe_dump(self.config.to_yaml_dict(), sort_keys=False))
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({"state_dict": state}, path / CKPT_FILE)
        return path

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str = "cpu",
        image_size: tuple[int, int] | None = None,
        trust_checkpoint: bool = False,
        **kwargs: Any,
    ) -> IBQTokenizer:
        """Load config.yaml + model.ckpt. ``trust_checkpoint`` allows full unpickling (only for files you trust)."""
        from emu_guide.optional import require

        yaml = require("yaml")
        path = Path(directory)
        cfg_path, ckpt_path = path / CONFIG_FILE, path / CKPT_FILE
        for p in (cfg_path, ckpt_path):
            if not p.is_file():
                raise VisionTokenizerError(f"IBQ: missing {p} (expected config.yaml + model.ckpt)")
        try:
            doc = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError as exc:
            raise VisionTokenizerError(f"IBQ: {cfg_path} is not valid YAML: {exc}") from exc
        config = IBQConfig.from_yaml_dict(doc, str(cfg_path))
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=not trust_checkpoint)
        except Exception as exc:  # corrupt zip, truncated file, or pickled objects refused by weights_only
            raise VisionTokenizerError(
                f"IBQ: cannot read {ckpt_path}: {exc}. If the file is intact and trusted, pass trust_checkpoint=True"
            ) from exc
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise VisionTokenizerError(f"IBQ: {ckpt_path} holds no state dict of tensors")
        # Training checkpoints may carry the GAN/perceptual loss modules: not part of the tokenizer.
        state = {k: v for k, v in state.items() if not k.startswith("loss.")}
        model = IBQ(config)
        load_state_strict(model, state, str(ckpt_path))
        return cls(model, image_size=image_size, device=device)
