"""DiDA: the whole subgoal image refined in K parallel passes instead of one pass per token.

The recipe (Emu3.5's DiDA, MaskGIT's schedule; the code is ours):

1. The prompt (and the text before the image) is in the KV cache once (``KVState``).
2. The image block ``BOI h*w IMG row EOL ... row EOI`` (``TokenLayout.image_block``) is laid out
   with every structural token PINNED and every cell initialised to the absorbing ``mask_id``
   (``init="mask"``) or to uniformly random codes (``init="uniform"``, URSA-style).
3. K times: ONE forward of the whole block after the cached prefix (DIDA PEEK: 4D mask, the
   block sees the whole prefix and itself bidirectionally; explicit positions continue the
   prefix; the block's KV is dropped afterwards). Cell j's distribution is read from the logits
   at block position j-1: the NEXT-TOKEN SHIFT, so the adapted model keeps reading logits the
   way the AR model it starts from does (a cell after EOL/IMG is read at that structural token).
   ``dida_loss`` trains exactly this.
4. Every still-open cell draws a candidate; the schedule says how many cells must be committed
   after step t (cosine: the open fraction is cos(pi/2 * t/K)); the most confident candidates
   are committed for good. Confidence = log-probability of the candidate plus Gumbel noise
   (float64) whose scale anneals linearly to 0 at the last step, so early commits are not all
   taken from one flat region. Open cells go back to ``mask_id`` (or fresh random codes: the same
   corruption training saw). At t = K every cell is committed.
5. Classifier-free guidance: [cond, uncond] rows of one batched forward; guided log-probs
   log p_u + s (log p_c - log p_u) over visual codes only.

After step K the finished block is pending: the next text token (if the grammar wants one) comes
from one CAUSAL APPEND of the clean block, exactly what a trained AR model would have cached.
"""

from __future__ import annotations

import math

import torch

from model_runtime.decoding.ar import guide
from model_runtime.decoding.cache import KVState
from model_runtime.decoding.constraints import DecodeConstraint
from model_runtime.decoding.sampling import gumbel_like, sample

__all__ = ["decode_image_dida", "open_fraction", "commit_counts"]


def open_fraction(t: int, steps: int, schedule: str = "cosine") -> float:
    """Fraction of cells still uncommitted after step t of ``steps`` (1 at t=0, 0 at t=steps)."""
    r = t / steps
    if schedule == "cosine":
        return math.cos(math.pi / 2 * r)
    if schedule == "linear":
        return 1.0 - r
    raise ValueError(f"unknown DiDA schedule {schedule!r}; expected 'cosine' or 'linear'")


def commit_counts(num_cells: int, steps: int, schedule: str = "cosine") -> list[int]:
    """How many cells each step commits (>= 1 per step while any is open; sums to num_cells)."""
    counts, done = [], 0
    for t in range(1, steps + 1):
        target = num_cells - math.floor(num_cells * open_fraction(t, steps, schedule) + 1e-9)
        if t == steps:
            target = num_cells
        n = min(max(target - done, 1), num_cells - done)
        counts.append(n)
        done += n
    return counts


def decode_image_dida(
    state: KVState,
    cons: DecodeConstraint,
    steps: int = 8,
    schedule: str = "cosine",
    init: str = "mask",
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    confidence_noise: float = 2.0,
) -> tuple[list[int], list[float]]:
    """Decode the image block (entered right after BOI, which is pending) by DiDA.

    ``state`` holds the prefix (batch 2 = [cond, uncond] under guidance). Returns (block ids from
    BOI to EOI, max-probability of each cell when it was committed). On return the whole block
    is pending in ``state`` and ``cons`` has consumed it.
    """
    if not cons.at_image_start or state.pending != [cons.layout.boi]:
        raise RuntimeError("decode_image_dida must start right after BOI (pending = [BOI])")
    if init not in ("mask", "uniform"):
        raise ValueError(f"DiDA init must be 'mask' or 'uniform', got {init!r}")
    lay, block = cons.layout, cons.block
    device = state.valid.device
    vo, nc = lay.visual_offset, lay.num_visual_codes
    state.pending = []  # the block (from its BOI) is run by peek() below

    ids = torch.empty(block.length, dtype=torch.long, device=device)  # (L,) the block being refined
    ids[torch.as_tensor(block.fixed_offsets, device=device)] = torch.as_tensor(block.fixed_ids, device=device)
    cells = torch.as_tensor(block.cell_offsets, device=device)  # (N,) offsets of the cells
    read_at = cells - 1  # NEXT-TOKEN SHIFT: cell j is predicted at block position j-1
    n = cells.numel()
    codes = torch.zeros(n, dtype=torch.long, device=device)  # committed codes
    committed = torch.zeros(n, dtype=torch.bool, device=device)
    cell_conf = torch.zeros(n, dtype=torch.float32, device=device)

    def fill_open() -> None:
        if init == "mask":  # absorbing state
            ids[cells[~committed]] = lay.mask_id
        else:  # uniform noise, redrawn each step (the corruption dida_loss trains on)
            k = int((~committed).sum())
            ids[cells[~committed]] = vo + torch.randint(nc, (k,), generator=generator, device=device)

    ids[cells] = vo + codes
    fill_open()
    for t, n_commit in enumerate(commit_counts(n, steps, schedule), start=1):
        logits = state.peek(ids, logits_index=read_at)  # DIDA PEEK -> (B, N, V), no host round trip
        guided = guide(logits[..., vo : vo + nc], guidance_scale)  # (N, C)
        cand, p_cand, max_p = sample(guided, temperature, top_k, top_p, generator)  # (N,) each
        score = torch.log(p_cand.double().clamp_min(1e-300))  # (N,) float64 confidence
        anneal = confidence_noise * (1.0 - t / steps)
        if temperature > 0 and anneal > 0:
            score = score + anneal * gumbel_like(score.shape, generator, device)
        score[committed] = -math.inf  # committed cells stay as they are
        chosen = torch.topk(score, n_commit).indices
        codes[chosen] = cand[chosen]
        cell_conf[chosen] = max_p[chosen].float()
        committed[chosen] = True
        ids[cells[committed]] = vo + codes[committed]
        fill_open()
    out = ids.tolist()
    cons.advance_all(out[1:])  # BOI was consumed by the text decoder
    state.pending = out  # the clean block, for a CAUSAL APPEND if text follows
    return out, cell_conf.tolist()
