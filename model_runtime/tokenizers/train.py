"""A plain training loop for the FSQ tokenizer (the fine-tuning pipeline may call it or use its own).

Reconstruction loss only (``fsq_loss``): FSQ has no codebook to learn, so there is nothing else
to balance. AdamW, cosine learning-rate decay after a short warm-up, random batches of frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer, fsq_loss

__all__ = ["train_fsq_tokenizer"]


def train_fsq_tokenizer(
    frames: np.ndarray,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 2e-3,
    config: FSQConfig | None = None,
    seed: int = 0,
    edge_weight: float = 0.5,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    tokenizer: FSQTokenizer | None = None,
) -> tuple[FSQTokenizer, list[dict[str, float]]]:
    """Train (or continue training ``tokenizer``) on ``frames`` (N, H, W, 3) uint8 -> (tokenizer, loss log)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"train_fsq_tokenizer: expected (N, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    tok = tokenizer or FSQTokenizer.from_config(config or FSQConfig(image_size=frames.shape[1]), seed=seed)
    size = tok.config.image_size
    if frames.shape[1:3] != (size, size):
        raise ValueError(f"frames are {frames.shape[1]}x{frames.shape[2]}, the tokenizer takes {size}x{size}")
    model = tok.model.train()
    data = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, betas=(0.9, 0.99))
    warmup = max(1, steps // 20)
    gen = torch.Generator().manual_seed(seed)
    log: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="fsq tokenizer", unit="step")
    for step in range(steps):
        scale = (
            (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        )
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = data[idx].to(tok.device).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        recon, _ = model(x)
        loss, parts = fsq_loss(recon, x, edge_weight=edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append(parts)
        if on_step is not None:
            on_step(step, parts)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{parts['loss']:.4f}", l1=f"{parts['l1']:.4f}")
    if bar is not None:
        bar.close()
    model.eval()
    return tok, log
