"""Stage ``dida``: the loss and the held-out image prediction of DiDA adaptation.

Training: ``model_runtime.decoding.dida_loss`` appends a noisy copy of each answer image (absorbing
mask or uniform random codes, a random fraction corrupted), attends it to the clean prefix and
bidirectionally inside itself, and adds the loss on the corrupted cells to the ordinary weighted
next-token loss (``dida.next_token_loss_weight``) so text decoding does not drift.

Evaluation: the first DiDA step from a fully masked block (every cell predicted in one parallel
forward), which is what the decoder does before its confidence schedule refines the image.
"""

from __future__ import annotations

import torch

from model_runtime.decoding.dida_loss import build_dida_batch, dida_attention_mask, dida_loss


def dida_training_loss(stage, model, batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss + DiDA loss for one batch; noise drawn from ``gen`` (per step, resumable)."""
    cfg = stage.cfg.dida
    device = batch["input_ids"].device
    # Build on CPU: the step generator is a CPU generator (same noise on CPU and GPU runs).
    db = build_dida_batch(
        batch["input_ids"].cpu(),
        batch["labels"].cpu(),
        stage.layout,
        attention_mask=batch["attention_mask"].cpu(),
        loss_weights=batch["loss_weights"].cpu(),
        noise=cfg.noise,
        generator=gen,
    )
    for name in ("input_ids", "position_ids", "attention_mask", "targets", "weights", "is_noisy"):
        setattr(db, name, getattr(db, name).to(device))
    if device.type == "cuda":  # the additive mask must match the autocast dtype
        db.attention_mask = db.attention_mask.to(torch.bfloat16 if stage.cfg.precision != "fp32" else torch.float32)
    out = dida_loss(model, db, lm_weight=cfg.next_token_loss_weight, dida_weight=cfg.noisy_loss_weight)
    return out.loss, {
        "lm_loss": float(out.lm_loss.detach()),
        "dida_loss": float(out.dida_loss.detach()),
        "dida_acc": out.dida_accuracy,
    }


def dida_image_logits(stage, model, batch) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Per sample: logits (cells, V) for the target image from ONE parallel pass over a fully
    masked copy; plus the clean part's logits (B, T, V) for the text metrics."""
    layout = stage.layout
    ids, attn = batch["input_ids"], batch["attention_mask"]
    bsz, t = ids.shape
    device = ids.device
    rows, cell_pos = [], []
    for r, s in enumerate(batch["samples"]):
        tgt = [sp for sp in s.image_spans if sp.is_target]
        if not tgt:
            rows.append(None)
            cell_pos.append(None)
            continue
        sp = tgt[0]
        block = layout.image_block(sp.height, sp.width)
        noisy = ids[r, sp.start : sp.end].clone()
        noisy[torch.as_tensor(block.cell_offsets, device=device)] = layout.mask_id  # every cell unknown
        rows.append((noisy, sp.start, sp.end - sp.start))
        cell_pos.append(torch.as_tensor(block.cell_offsets, device=device))
    extra = max((x[2] for x in rows if x is not None), default=0)
    total = t + extra
    full = torch.full((bsz, total), layout.pad, dtype=torch.long, device=device)
    pos = torch.zeros((bsz, total), dtype=torch.long, device=device)
    masks = []
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    dtype = torch.float32 if device.type != "cuda" else torch.bfloat16
    for r in range(bsz):
        full[r, :t] = ids[r]
        pos[r, :t] = torch.arange(t, device=device)
        blocks = []
        if rows[r] is not None:
            noisy, start, length = rows[r]
            full[r, t : t + length] = noisy
            pos[r, t : t + length] = torch.arange(start, start + length, device=device)
            blocks = [(t, length, start)]
        masks.append(dida_attention_mask(causal & attn[r].bool()[None, :], blocks, total, dtype))
    logits = model(input_ids=full, attention_mask=torch.stack(masks), position_ids=pos, use_cache=False).logits
    out: list[torch.Tensor | None] = []
    for r in range(bsz):
        if rows[r] is None:
            out.append(None)
        else:
            out.append(logits[r, t + cell_pos[r] - 1])  # noisy offset j-1 predicts cell j (next-token shift)
    return out, logits[:, :t]
