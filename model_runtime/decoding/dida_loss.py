"""DiDA adaptation: the training batch (noisy image copies + their attention mask) and the loss.

A trained next-token model learns DiDA with one extra piece per training sequence: for every
TARGET image (an image in the answer; conditioning frames are left alone) a noisy copy of its
block is appended after the clean sequence:

    clean:  [ prompt ... step text  BOI h*w IMG c c c EOL c c c EOI  EOS ]   causal, as usual
    noisy:                         [ BOI h*w IMG m c m EOL m m c EOI ]       one per target image

- The clean part keeps the ordinary causal mask and next-token loss (text stays autoregressive).
- A noisy block attends to the clean tokens BEFORE its image (what the decoder has cached at
  inference: the prompt and the step text) and bidirectionally to its own tokens; nothing
  attends to a noisy block. Position ids repeat the clean image's positions.
- Corruption (per image): a fraction r = cos(pi/2 * u), u ~ U(0, 1) of the cells (at least one)
  is replaced by ``mask_id`` (``noise="mask"``, absorbing) or by uniform random codes
  (``noise="uniform"``); structural tokens are never corrupted (they are pinned at inference).
- Loss at noisy block position j-1 against the CLEAN code of cell j: the next-token shift that
  ``decode_image_dida`` reads logits with. By default only corrupted cells count (uncorrupted
  ones are trivially copied under the mask noise).

    batch = build_dida_batch(input_ids, labels, layout, attention_mask=pad_mask, noise="mask", generator=g)
    out = dida_loss(model, batch, lm_weight=1.0, dida_weight=1.0)
    out.loss.backward()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model_runtime.layout import TokenLayout

__all__ = ["DidaBatch", "DidaLossOutput", "build_dida_batch", "dida_attention_mask", "dida_loss"]

IGNORE_INDEX = -100


@dataclass
class DidaBatch:
    input_ids: torch.Tensor  # (B, T') clean tokens then the noisy copies, right-padded with PAD
    position_ids: torch.Tensor  # (B, T')
    attention_mask: torch.Tensor  # (B, 1, T', T') additive: 0 = attend, dtype-min = not
    targets: torch.Tensor  # (B, T') the id logits[:, i] must predict, IGNORE_INDEX where no loss
    weights: torch.Tensor  # (B, T') float loss weight per position (0 where no loss)
    is_noisy: torch.Tensor  # (B, T') bool: position belongs to a noisy copy (DiDA loss) vs clean (LM loss)
    clean_length: int  # T: the clean part is [:, :T]


@dataclass
class DidaLossOutput:
    loss: torch.Tensor  # lm_weight * lm_loss + dida_weight * dida_loss (scalar, differentiable)
    lm_loss: torch.Tensor  # weighted next-token cross-entropy over the clean part
    dida_loss: torch.Tensor  # cross-entropy of corrupted cells, read at the shifted positions
    dida_tokens: int  # number of cells in the DiDA loss
    dida_accuracy: float  # argmax accuracy on those cells (a training-progress signal)


def dida_attention_mask(
    allowed_clean: torch.Tensor, blocks: list[tuple[int, int, int]], total: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive (1, T', T') mask for one row.

    ``allowed_clean`` (T, T) bool is the clean part's mask (causal and padding). ``blocks`` lists
    (noisy_start, length, clean_start): the noisy block at [noisy_start, noisy_start+length)
    sees clean columns [0, clean_start) that the clean token at clean_start could see, and itself.
    """
    t = allowed_clean.shape[0]
    allowed = torch.zeros(total, total, dtype=torch.bool, device=allowed_clean.device)
    allowed[:t, :t] = allowed_clean  # CLEAN: causal (+ padding), never sees a noisy block
    for start, length, clean_start in blocks:
        rows = slice(start, start + length)
        # NOISY -> CLEAN PREFIX: exactly what the clean BOI sees, minus the BOI itself.
        allowed[rows, :clean_start] = allowed_clean[clean_start, :clean_start]
        allowed[rows, rows] = True  # NOISY <-> NOISY: bidirectional inside its own block
    allowed |= torch.eye(total, dtype=torch.bool, device=allowed.device)  # padding rows: no NaN softmax
    mask = torch.zeros(total, total, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None]


def build_dida_batch(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    layout: TokenLayout,
    attention_mask: torch.Tensor | None = None,
    loss_weights: torch.Tensor | None = None,
    noise: str = "mask",
    loss_on: str = "corrupted",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> DidaBatch:
    """Append a noisy copy of every target image and build masks, positions and targets.

    ``input_ids``/``labels`` (B, T): labels follow the transformers convention (equal to
    ``input_ids`` where trained, IGNORE_INDEX elsewhere, NOT shifted). ``attention_mask`` (B, T)
    1 = real token (right padding), default all ones. ``loss_weights`` (B, T) per-token weights of
    the clean next-token loss (e.g. ``TrainingSequence.loss_weights``), default 1 where labelled.
    A target image is one whose first cell is labelled.
    """
    if noise not in ("mask", "uniform"):
        raise ValueError(f"noise must be 'mask' or 'uniform', got {noise!r}")
    if loss_on not in ("corrupted", "all"):
        raise ValueError(f"loss_on must be 'corrupted' or 'all', got {loss_on!r}")
    if input_ids.shape != labels.shape or input_ids.ndim != 2:
        raise ValueError(f"input_ids and labels must both be (B, T), got {tuple(input_ids.shape)}, {tuple(labels.shape)}")
    bsz, t = input_ids.shape
    device = input_ids.device
    pad_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if loss_weights is None:
        loss_weights = (labels != IGNORE_INDEX).float()
    vo, nc = layout.visual_offset, layout.num_visual_codes

    rows = []  # per row: (noisy ids, noisy positions, noisy targets, blocks)
    for b in range(bsz):
        ids = input_ids[b]
        n_ids, n_pos, n_tgt, blocks = [], [], [], []
        cursor = t
        for s, e in layout.find_images(ids.tolist()):  # PAD is never BOI: padding cannot fake an image
            block_ids = ids[s:e]
            cell_mask = (block_ids >= vo) & (block_ids < vo + nc)
            cells = torch.nonzero(cell_mask).squeeze(1)  # offsets of cells in the block
            if cells.numel() == 0 or labels[b, s + int(cells[0])] == IGNORE_INDEX:
                continue  # a conditioning frame: no noisy copy
            n = cells.numel()
            u = torch.rand((), generator=generator, device=device).item()
            n_corrupt = max(1, math.ceil(math.cos(math.pi / 2 * u) * n))
            corrupt = cells[torch.randperm(n, generator=generator, device=device)[:n_corrupt]]
            noisy = block_ids.clone()
            if noise == "mask":
                noisy[corrupt] = layout.mask_id
            else:
                noisy[corrupt] = vo + torch.randint(nc, (n_corrupt,), generator=generator, device=device)
            target = torch.full_like(block_ids, IGNORE_INDEX)
            scored = corrupt if loss_on == "corrupted" else cells
            target[scored - 1] = block_ids[scored]  # NEXT-TOKEN SHIFT: cell j is read at offset j-1
            n_ids.append(noisy)
            n_pos.append(torch.arange(s, e, device=device))
            n_tgt.append(target)
            blocks.append((cursor, e - s, s))
            cursor += e - s
        rows.append((n_ids, n_pos, n_tgt, blocks))

    total = t + max(sum(len(x) for x in r[0]) for r in rows) if rows else t
    out_ids = torch.full((bsz, total), layout.pad, dtype=torch.long, device=device)
    out_pos = torch.zeros((bsz, total), dtype=torch.long, device=device)
    targets = torch.full((bsz, total), IGNORE_INDEX, dtype=torch.long, device=device)
    weights = torch.zeros((bsz, total), dtype=torch.float32, device=device)
    is_noisy = torch.zeros((bsz, total), dtype=torch.bool, device=device)
    masks = []
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    for b, (n_ids, n_pos, n_tgt, blocks) in enumerate(rows):
        out_ids[b, :t] = input_ids[b]
        out_pos[b, :t] = torch.arange(t, device=device)
        # CLEAN targets: position i predicts token i+1 (the shift transformers' loss does itself).
        targets[b, : t - 1] = labels[b, 1:]
        weights[b, : t - 1] = loss_weights[b, 1:] * (labels[b, 1:] != IGNORE_INDEX)
        if n_ids:
            k = t + sum(len(x) for x in n_ids)
            out_ids[b, t:k] = torch.cat(n_ids)
            out_pos[b, t:k] = torch.cat(n_pos)
            targets[b, t:k] = torch.cat(n_tgt)
            weights[b, t:k] = (torch.cat(n_tgt) != IGNORE_INDEX).float()
            is_noisy[b, t:k] = True
        allowed_clean = causal & pad_mask[b][None, :]
        masks.append(dida_attention_mask(allowed_clean, blocks, total, dtype))
    return DidaBatch(
        input_ids=out_ids,
        position_ids=out_pos,
        attention_mask=torch.stack(masks),
        targets=targets,
        weights=weights,
        is_noisy=is_noisy,
        clean_length=t,
    )


def dida_loss(model: torch.nn.Module, batch: DidaBatch, lm_weight: float = 1.0, dida_weight: float = 1.0) -> DidaLossOutput:
    """One forward over clean + noisy tokens; weighted next-token loss plus the DiDA cell loss."""
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
    ).logits.float()  # (B, T', V)
    valid = batch.targets != IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch.targets.clamp_min(0), reduction="none"
    )  # (B, T')
    ce = ce * valid
    clean = valid & ~batch.is_noisy
    noisy = valid & batch.is_noisy
    w = batch.weights * clean
    lm = (ce * w).sum() / w.sum().clamp_min(1e-8)
    n_noisy = int(noisy.sum())
    dd = (ce * noisy).sum() / max(n_noisy, 1)
    with torch.no_grad():
        acc = ((logits.argmax(-1) == batch.targets) & noisy).sum().item() / max(n_noisy, 1)
    return DidaLossOutput(
        loss=lm_weight * lm + dida_weight * dd, lm_loss=lm, dida_loss=dd, dida_tokens=n_noisy, dida_accuracy=acc
    )
