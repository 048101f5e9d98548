"""Autoregressive decoding: text (always) and the image baseline, one sampled token per forward.

Both run on a ``KVState``: the prompt's KV is cached once; each step runs only the pending tokens
(the token just sampled plus any forced structural tokens after it) and samples from the last
position's logits. ``use_cache=False`` in ``decode_image_ar`` recomputes the whole sequence every
step instead; it exists to test that the cached path gives the same tokens.
"""

from __future__ import annotations

import torch

from model_runtime.decoding.cache import KVState
from model_runtime.decoding.constraints import DecodeConstraint, Phase
from model_runtime.decoding.sampling import sample

__all__ = ["decode_text", "decode_image_ar", "guide"]


def guide(cell_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on image-token log-probabilities.

    ``cell_logits`` (B, ..., C) over visual codes only; B = 1 (no guidance) or 2 ([cond, uncond]).
    Returns (..., C): log p_u + scale * (log p_c - log p_u) (scale 1 = the conditional model).
    """
    if cell_logits.shape[0] == 1:
        return cell_logits[0].float()
    logp = torch.log_softmax(cell_logits.float(), dim=-1)
    cond, uncond = logp[0], logp[1]
    return uncond + scale * (cond - uncond)


def decode_text(
    state: KVState,
    logits: torch.Tensor,
    cons: DecodeConstraint,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    allowed_mass: list[float] | None = None,
) -> list[float]:
    """Sample text until the answer ends (EOS) or an image starts (BOI).

    ``logits`` (1, V) are the last position's logits when ``state.pending`` is empty. The last
    token (BOI or EOS) is left pending. Returns the max-probability of each sampled token;
    ``allowed_mass``, when given, receives for each one ``cons.allowed_probability`` of the
    model's own (unmasked) distribution there.
    """
    confidences: list[float] = []
    while cons.phase is Phase.TEXT:
        token = cons.forced()
        if token is None:
            if state.pending:  # CAUSAL APPEND of the last sampled/forced tokens -> next logits
                logits = state.flush()
            token, max_p = _sample_looking_ahead(state, logits[0], cons, temperature, top_k, top_p, generator)
            confidences.append(float(max_p))
            if allowed_mass is not None:  # before advance: what could be honoured at this position
                allowed_mass.append(cons.allowed_probability(torch.softmax(logits[0].float(), dim=-1)))
        cons.advance(token)
        state.pending.append(token)
    return confidences


def _sample_looking_ahead(
    state: KVState,
    logits: torch.Tensor,
    cons: DecodeConstraint,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> tuple[int, torch.Tensor]:
    """One text token under ``cons``, with grounded decoding's first words looked ahead at.

    A word that only starts names the caller does not offer ("left" of "left sleeve") is banned by
    the mention rule, though the model may mean another phrase ("the left bin"). Such words are
    offered too; when one is drawn, one forward on it (``KVState.peek``, the cache left as it was)
    shows whether the model goes on with a name: then it is banned and the draw repeated, else kept.
    """
    masked = cons.mask_logits(logits)
    refused: set[int] = set()
    while True:
        starts = sorted(t for t in cons.maybe_name_starts() - refused if t < logits.shape[-1])
        offered = masked.clone()
        if starts:
            offered[starts] = logits[starts]
        ids, _, max_p = sample(offered, temperature, top_k, top_p, generator)
        token = int(ids)
        if token not in starts:
            return token, max_p
        ahead = state.peek([token], logits_index=1)[0, -1]
        if not cons.name_follows(token, ahead):
            return token, max_p
        refused.add(token)  # a name the caller does not offer: draw again without it


def decode_image_ar(
    state: KVState,
    cons: DecodeConstraint,
    guidance_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    use_cache: bool = True,
) -> tuple[list[int], list[float]]:
    """Fill the image block one cell per forward (the baseline DiDA is measured against).

    Entered right after BOI (pending). Structural tokens are forced and ride along with the next
    forward. On return the block up to EOI has been emitted; under the cache path the last cell
    and EOI are still pending. Returns (block ids from BOI to EOI, max-probability per cell).
    """
    if not cons.at_image_start:
        raise RuntimeError("decode_image_ar must start right after BOI")
    lay = cons.layout
    vo, nc = lay.visual_offset, lay.num_visual_codes
    if not use_cache and state.batch != 1:
        raise ValueError("the no-cache reference path supports batch 1 (no guidance) only")
    context = state.tokens + state.pending  # every id before the first cell (BOI included)
    block = [lay.boi]
    confidences: list[float] = []
    while cons.phase is Phase.IMAGE:
        token = cons.forced()
        if token is None:
            if use_cache:
                logits = state.flush()  # CAUSAL APPEND of pending ids -> (B, V); B = 2 under guidance
            else:  # NO CACHE (reference): a fresh state reruns everything from the first prompt token
                fresh = KVState(state.runner, batch=1)
                fresh.pending = context + block[1:]
                logits = fresh.flush()
            cell = guide(logits[:, None, vo : vo + nc], guidance_scale)[0]  # (C,) visual codes only
            code, _, max_p = sample(cell, temperature, top_k, top_p, generator)
            token = vo + int(code)
            confidences.append(float(max_p))
        cons.advance(token)
        block.append(token)
        if use_cache:
            state.pending.append(token)
    return block, confidences
