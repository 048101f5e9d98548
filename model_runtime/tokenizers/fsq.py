"""The default vision tokenizer: a small FSQ (finite scalar quantisation) conv autoencoder.

Made for 96x96 simulation frames: downsample 8 -> a 12x12 grid of codes, levels (8, 5, 5, 5)
-> 1000 codes. Why FSQ and not a VQ codebook: see docs/tokenizers.md (no codebook to collapse,
no commitment/codebook losses, no EMA, every code reachable by construction, tiny).

FSQ (Mentzer et al., 2023): the encoder emits ``d = len(levels)`` channels per cell; channel i is
squashed to ``levels[i]`` values with tanh and rounded (straight-through gradient). The tuple of
rounded values is the code (mixed-radix number). The quantiser has no parameters, so decoding a
code grid is exact: ``decode(encode(x))`` equals the autoencoder's training-time output.

Shapes for the default config, batch B:
  image (B, 3, 96, 96) -> encoder -> z (B, 4, 12, 12) -> FSQ -> codes (B, 12, 12) in [0, 1000)
  codes -> (B, 4, 12, 12) levels in [-1, 1] -> decoder -> (B, 3, 96, 96) in [-1, 1]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_runtime.tokenizers.base import VisionTokenizer, VisionTokenizerError, load_state_strict

__all__ = ["FSQ", "FSQAutoencoder", "FSQConfig", "FSQTokenizer", "fsq_loss", "object_pixel_mask"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class FSQConfig:
    image_size: int = 96  # square input frames, pixels per side
    levels: tuple[int, ...] = (8, 5, 5, 5)  # values per latent channel; num_codes = prod(levels) = 1000
    channels: tuple[int, ...] = (32, 64, 96)  # conv widths after each stride-2 stage (len = log2(downsample))
    res_blocks: int = 1  # residual blocks at the code resolution, in the encoder and in the decoder
    out_channels: int = 16  # decoder width at full resolution, before the RGB projection

    def __post_init__(self) -> None:
        self.levels = tuple(int(v) for v in self.levels)
        self.channels = tuple(int(c) for c in self.channels)
        if not self.levels or any(v < 2 for v in self.levels):
            raise ValueError(f"FSQConfig.levels must be >= 2 each, got {self.levels}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"FSQConfig.channels must be positive, got {self.channels}")
        if self.image_size <= 0 or self.image_size % self.downsample:
            raise ValueError(f"FSQConfig.image_size {self.image_size} must be a multiple of {self.downsample}")
        if self.res_blocks < 0 or self.out_channels <= 0:
            raise ValueError(
                f"FSQConfig: res_blocks >= 0 and out_channels > 0, got {self.res_blocks}, {self.out_channels}"
            )

    @property
    def downsample(self) -> int:
        return 2 ** len(self.channels)

    @property
    def num_codes(self) -> int:
        return math.prod(self.levels)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["levels"], d["channels"] = list(self.levels), list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FSQConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"FSQConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


class FSQ(nn.Module):
    """Parameter-free scalar quantiser: (B, d, h, w) floats -> levels, codes (B, h, w)."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.int64), 0)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("half_width", torch.floor(lv / 2), persistent=False)  # L // 2

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash channel i into (about) levels[i] integer-rounding bins. z: (B, d, h, w)."""
        lv = self.levels.view(1, -1, 1, 1)
        half_l = (lv - 1) * (1 + 1e-3) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)  # even L: bins are centred half a step off zero
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, d, h, w) -> (normalised levels (B, d, h, w) in [-1, 1], codes (B, h, w) int64)."""
        bounded = self._bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()  # straight-through estimator
        hw = self.half_width.view(1, -1, 1, 1)
        digits = (torch.round(bounded) + hw).to(torch.int64)  # (B, d, h, w) in [0, L_i)
        codes = (digits * self.basis.view(1, -1, 1, 1)).sum(dim=1)
        return rounded / hw, codes

    def codes_to_digits(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (...) -> per-channel level indices (..., d) in [0, L_i) (mixed radix, channel 0 lowest)."""
        return (codes.unsqueeze(-1) // self.basis) % self.levels.to(torch.int64)

    def codes_to_levels(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> normalised levels (B, d, h, w), exactly what ``forward`` returned."""
        digits = self.codes_to_digits(codes).permute(0, 3, 1, 2)
        hw = self.half_width.view(1, -1, 1, 1)
        return (digits.float() - hw) / hw


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class FSQAutoencoder(nn.Module):
    """Conv encoder (stride-2 4x4 convs) -> FSQ -> conv decoder (stride-2 4x4 transposed convs)."""

    def __init__(self, config: FSQConfig) -> None:
        super().__init__()
        self.config = config
        d = len(config.levels)
        enc: list[nn.Module] = []
        c_in = 3
        for c in config.channels:  # each stage halves H and W
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.SiLU()]
            c_in = c
        enc += [ResBlock(c_in) for _ in range(config.res_blocks)]
        enc += [nn.GroupNorm(8, c_in), nn.SiLU(), nn.Conv2d(c_in, d, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = FSQ(config.levels)

        dec: list[nn.Module] = [nn.Conv2d(d, c_in, 3, padding=1)]
        dec += [ResBlock(c_in) for _ in range(config.res_blocks)]
        outs = [*reversed(config.channels[:-1]), config.out_channels]
        for c in outs:  # each stage doubles H and W
            dec += [nn.SiLU(), nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1)]
            c_in = c
        dec += [nn.SiLU(), nn.Conv2d(c_in, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> (levels (B, d, h, w), codes (B, h, w))."""
        return self.quantizer(self.encoder(x))

    def decode_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) -> (B, 3, H, W), unclamped (the loss sees the raw output)."""
        return self.decoder(levels)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_levels(self.quantizer.codes_to_levels(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> (reconstruction (B, 3, H, W), codes (B, h, w))."""
        levels, codes = self.encode(x)
        return self.decode_levels(levels), codes


def object_pixel_mask(images: torch.Tensor, threshold: float = 0.08, window: int = 9) -> torch.Tensor:
    """(B, 1, H, W) 1.0 where a pixel stands out from its neighbourhood mean (objects), else 0.0.

    Tabletop frames are mostly a slowly varying table; small objects differ from a local average
    of ``window`` pixels by more than ``threshold`` (images in [-1, 1]). The same idea as the
    planner's detector foreground, but cheap enough for every training batch.
    """
    with torch.no_grad():
        local = F.avg_pool2d(images, window, stride=1, padding=window // 2, count_include_pad=False)
        return ((images - local).abs().mean(dim=1, keepdim=True) > threshold).float()


def fsq_loss(
    recon: torch.Tensor, target: torch.Tensor, l2_weight: float = 1.0, edge_weight: float = 0.5,
    object_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction loss on [-1, 1] images (B, 3, H, W): L1 + l2_weight * MSE + edge_weight * gradient L1.

    FSQ needs nothing else: no codebook or commitment term (the quantiser has no parameters and the
    straight-through rounding is exact at inference). The gradient (edge) term compares horizontal
    and vertical finite differences: small objects' borders, which decide object-position error,
    weigh more than flat table pixels. ``object_weight`` > 0 weighs the L1 and MSE terms of pixels
    that stand out from the table (``object_pixel_mask``) by 1 + object_weight: the table dominates
    a plain average, yet the objects are what the guidance model has to read.
    """
    if recon.shape != target.shape:
        raise ValueError(f"fsq_loss: recon {tuple(recon.shape)} and target {tuple(target.shape)} differ")
    if object_weight < 0:
        raise ValueError(f"fsq_loss: object_weight must be >= 0, got {object_weight}")
    diff = recon - target
    if object_weight > 0:
        w = 1.0 + object_weight * object_pixel_mask(target)
        w = w / w.mean()  # same overall scale as the unweighted loss
        l1 = (diff.abs() * w).mean()
        l2 = (diff.pow(2) * w).mean()
    else:
        l1 = diff.abs().mean()
        l2 = diff.pow(2).mean()
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    edge = (dx(recon) - dx(target)).abs().mean() + (dy(recon) - dy(target)).abs().mean()
    loss = l1 + l2_weight * l2 + edge_weight * edge
    parts = {"l1": l1, "l2": l2, "edge": edge, "loss": loss}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


class FSQTokenizer(VisionTokenizer):
    """``VisionTokenizer`` over an ``FSQAutoencoder``; saved as config.json + model.safetensors."""

    name = "fsq"

    def __init__(self, model: FSQAutoencoder, device: str = "cpu") -> None:
        self.config = model.config
        super().__init__(model, (model.config.image_size, model.config.image_size), device)

    @classmethod
    def from_config(cls, config: FSQConfig | None = None, seed: int = 0, device: str = "cpu") -> FSQTokenizer:
        """A freshly initialised (untrained) tokenizer."""
        torch.manual_seed(seed)
        return cls(FSQAutoencoder(config or FSQConfig()), device=device)

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)[1]

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode_codes(codes)

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps({"kind": "fsq", **self.config.to_dict()}, indent=1) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt", "kind": "fsq"})
        return path

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", **kwargs: Any) -> FSQTokenizer:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise VisionTokenizerError(f"FSQ tokenizer: missing {p}")
        try:
            doc = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise VisionTokenizerError(f"FSQ tokenizer: {cfg_path} is not valid JSON: {exc}") from exc
        if doc.pop("kind", None) != "fsq":
            raise VisionTokenizerError(f"FSQ tokenizer: {cfg_path} is not an FSQ config (kind != 'fsq')")
        try:
            config = FSQConfig.from_dict(doc)
        except (TypeError, ValueError) as exc:
            raise VisionTokenizerError(f"FSQ tokenizer: bad config {cfg_path}: {exc}") from exc
        try:
            state = load_file(str(w_path))
        except (SafetensorError, OSError) as exc:
            raise VisionTokenizerError(f"FSQ tokenizer: cannot read {w_path}: {exc}") from exc
        model = FSQAutoencoder(config)
        load_state_strict(model, state, str(w_path))
        return cls(model, device=device)
