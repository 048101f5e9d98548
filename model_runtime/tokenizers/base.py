"""The vision-tokenizer interface: RGB frames <-> grids of discrete codes.

Every tokenizer (our FSQ default, Emu3's VQ-VAE, Emu3.5's IBQ) takes uint8 RGB images
(B, H, W, 3), numpy or torch, and returns int64 codes (B, H/downsample, W/downsample) of the same
array type; ``decode`` goes back to uint8 images. Validation (shape, dtype, channels, size, code
range) happens here once, so every tokenizer reports bad input the same way.

Subclasses implement two tensor functions on normalised pixels in [-1, 1]:
``_encode(x (B, 3, H, W) float) -> (B, h, w) int64`` and ``_decode(codes) -> (B, 3, H, W) float``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["VisionTokenizer", "VisionTokenizerError", "load_state_strict", "resize_image"]


class VisionTokenizerError(ValueError):
    """Bad input to a vision tokenizer or a checkpoint it cannot load; the message names the problem."""


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to (height, width) with area interpolation (OpenCV)."""
    import cv2

    height, width = size
    if image.shape[:2] == (height, width):
        return image
    interp = cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


class VisionTokenizer(ABC):
    """Encode frames to code grids and decode them back. Construct through a subclass's ``load``."""

    name: str = "vision"

    def __init__(self, model: torch.nn.Module, image_size: tuple[int, int] | None, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self._image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        if self._image_size is not None:
            for side in self._image_size:
                if side <= 0 or side % self.downsample:
                    raise VisionTokenizerError(
                        f"{self.name}: image size {self._image_size} must be positive multiples of {self.downsample}"
                    )

    # ---- properties every tokenizer has -----------------------------------------------------
    @property
    @abstractmethod
    def num_codes(self) -> int:
        """Codes are in [0, num_codes)."""

    @property
    @abstractmethod
    def downsample(self) -> int:
        """Pixels per code along each side."""

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) frames must have, or None when any multiple of ``downsample`` is accepted."""
        return self._image_size

    def code_grid(self, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) of the code grid for frames of ``image_size`` (default: the tokenizer's own)."""
        size = image_size or self._image_size
        if size is None:
            raise VisionTokenizerError(f"{self.name}: no fixed image size; pass one")
        return size[0] // self.downsample, size[1] // self.downsample

    # ---- subclass hooks ---------------------------------------------------------------------
    @abstractmethod
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [-1, 1] -> (B, h, w) int64."""

    @abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, 3, H, W) float, about [-1, 1]."""

    @abstractmethod
    def save(self, directory: str | Path) -> Path: ...

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path, device: str = "cpu", **kwargs: Any) -> VisionTokenizer: ...

    # ---- public API -------------------------------------------------------------------------
    def encode(self, images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """uint8 RGB (B, H, W, 3) -> int64 codes (B, h, w); numpy in -> numpy out, torch in -> torch out."""
        as_numpy = isinstance(images, np.ndarray)
        x = self._images_to_tensor(images)
        with torch.inference_mode():
            codes = self._encode(x).to(torch.int64)
        return codes.cpu().numpy() if as_numpy else codes

    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """int codes (B, h, w) -> uint8 RGB (B, H, W, 3); numpy in -> numpy out, torch in -> torch out."""
        as_numpy = isinstance(codes, np.ndarray)
        c = self._codes_to_tensor(codes)
        with torch.inference_mode():
            x = self._decode(c)
        images = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return images.cpu().numpy() if as_numpy else images

    def encode_one(self, image: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 frame -> (h, w) codes."""
        image = np.asarray(image)
        if image.ndim != 3:
            raise VisionTokenizerError(f"{self.name}: encode_one expects one (H, W, 3) image, got shape {image.shape}")
        return self.encode(image[None])[0]

    def decode_one(self, codes: np.ndarray) -> np.ndarray:
        """(h, w) codes -> one (H, W, 3) uint8 frame."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise VisionTokenizerError(f"{self.name}: decode_one expects one (h, w) code grid, got shape {codes.shape}")
        return self.decode(codes[None])[0]

    # ---- validation -------------------------------------------------------------------------
    def _images_to_tensor(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(images))
        elif isinstance(images, torch.Tensor):
            t = images
        else:
            raise VisionTokenizerError(
                f"{self.name}: images must be a numpy array or torch tensor, got {type(images).__name__}"
            )
        if t.dtype != torch.uint8:
            raise VisionTokenizerError(f"{self.name}: images must be uint8 RGB, got dtype {t.dtype}")
        if t.ndim != 4:
            raise VisionTokenizerError(f"{self.name}: images must be (B, H, W, 3), got shape {tuple(t.shape)}")
        if t.shape[-1] != 3:
            raise VisionTokenizerError(f"{self.name}: images must have 3 RGB channels last, got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise VisionTokenizerError(f"{self.name}: empty batch")
        hw = (int(t.shape[1]), int(t.shape[2]))
        if self._image_size is not None and hw != self._image_size:
            raise VisionTokenizerError(
                f"{self.name}: images are {hw[0]}x{hw[1]} but this tokenizer takes"
                f" {self._image_size[0]}x{self._image_size[1]} (resize with model_runtime.tokenizers.resize_image)"
            )
        if hw[0] % self.downsample or hw[1] % self.downsample:
            raise VisionTokenizerError(f"{self.name}: image size {hw} is not a multiple of {self.downsample}")
        x = t.to(self.device).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return x / 127.5 - 1.0

    def _codes_to_tensor(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(codes, np.ndarray):
            if not np.issubdtype(codes.dtype, np.integer):
                raise VisionTokenizerError(f"{self.name}: codes must be integers, got dtype {codes.dtype}")
            c = torch.from_numpy(np.ascontiguousarray(codes).astype(np.int64))
        elif isinstance(codes, torch.Tensor):
            if codes.dtype.is_floating_point or codes.dtype == torch.bool:
                raise VisionTokenizerError(f"{self.name}: codes must be integers, got dtype {codes.dtype}")
            c = codes.to(torch.int64)
        else:
            raise VisionTokenizerError(
                f"{self.name}: codes must be a numpy array or torch tensor, got {type(codes).__name__}"
            )
        if c.ndim != 3 or c.numel() == 0:
            raise VisionTokenizerError(
                f"{self.name}: codes must be a non-empty (B, h, w) grid, got shape {tuple(c.shape)}"
            )
        if self._image_size is not None and tuple(c.shape[1:]) != self.code_grid():
            raise VisionTokenizerError(
                f"{self.name}: code grid is {c.shape[1]}x{c.shape[2]} but this tokenizer's is"
                f" {self.code_grid()[0]}x{self.code_grid()[1]}"
            )
        lo, hi = int(c.min()), int(c.max())
        if lo < 0 or hi >= self.num_codes:
            raise VisionTokenizerError(f"{self.name}: codes must be in [0, {self.num_codes}), got range [{lo}, {hi}]")
        return c.to(self.device)


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with a message listing missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"shape mismatch ({'; '.join(shapes[:3])})")
        raise VisionTokenizerError(f"{source} does not match the model config: " + ", ".join(parts))
    model.load_state_dict(state, strict=True)
