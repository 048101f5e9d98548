"""KV-cache bookkeeping and attention masks for every decoder.

``KVState`` wraps a transformers ``DynamicCache`` with what the model alone does not track:

- ``valid`` (B, T): which cached slots are real. Rows of a batch may hold prefixes of different
  lengths (CFG's conditional and unconditional prompts): the shorter one is LEFT-padded, its pad
  slots hold zeros and are hidden by the mask. RoPE was applied to each key with its own row's
  position before caching, so padding changes nothing for the real slots.
- ``next_pos`` (B,): the position id of each row's next token (explicit ``position_ids`` always).
- ``pending``: tokens decided but not yet run through the model (forced structural tokens, or a
  token just sampled). They go through with the next forward that needs logits.

Every forward gets an explicit 4D additive mask (B, 1, q, T+q): 0 = may attend, dtype-min = not.
Two cases, named where they are built:

- CAUSAL APPEND (``flush``): new tokens see every valid cached slot and earlier new tokens.
  Text AR, image AR, and the clean pass that commits a finished DiDA block.
- DIDA PEEK (``peek``): the image block sees every valid cached slot and the WHOLE block
  (bidirectional); its KV is dropped right after (``crop``), the prefix cache is reused as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["ForwardCounter", "KVState", "attention_mask_4d"]


@dataclass
class ForwardCounter:
    """Calls the model and counts sequential forward passes per phase ("prefill", "text", "image", ...)."""

    model: torch.nn.Module
    phase: str = "prefill"
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        first = next(self.model.parameters())
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype  # of the additive masks (must match the activations)

    def __call__(self, input_ids, attention_mask, position_ids, cache, logits_index=None) -> torch.Tensor:
        self.counts[self.phase] = self.counts.get(self.phase, 0) + 1
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            # Only the rows we sample from go through the LM head (vocab can be 282k wide).
            logits_to_keep=logits_index if logits_index is not None else 0,
        )
        return out.logits


def attention_mask_4d(valid: torch.Tensor, q_len: int, bidirectional: bool, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (B, 1, q_len, T + q_len) for q_len new tokens after a cache of T slots.

    ``valid`` (B, T) bool marks the real cached slots. New tokens attend causally to each other,
    or to the whole new block when ``bidirectional`` (DiDA).
    """
    bsz, cached = valid.shape
    device = valid.device
    if bidirectional:
        new = torch.ones(q_len, q_len, dtype=torch.bool, device=device)
    else:
        new = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
    allowed = torch.cat(
        [valid[:, None, :].expand(bsz, q_len, cached), new[None].expand(bsz, q_len, q_len)], dim=-1
    )  # (B, q, T+q)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (B, 1, q, T+q)


class KVState:
    """One decoding stream (batch of rows sharing the tokens appended after their prefixes)."""

    def __init__(self, runner: ForwardCounter, batch: int = 1) -> None:
        from transformers import DynamicCache

        self.runner = runner
        device = runner.device
        self.cache = DynamicCache()
        self.valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)  # (B, T)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.pending: list[int] = []
        self.tokens: list[int] = []  # ids in the cache after the (possibly padded) prefixes

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        """Cached slots T (including left padding)."""
        return self.valid.shape[1]

    def _forward(
        self, ids: Sequence[int] | torch.Tensor, bidirectional: bool, logits_index: torch.Tensor | None
    ) -> torch.Tensor:
        device = self.valid.device
        q = len(ids)
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor(list(ids), dtype=torch.long)
        input_ids = ids.to(device)[None].expand(self.batch, q)  # (B, q): every row gets the same tokens
        position_ids = self.next_pos[:, None] + torch.arange(q, device=device)[None]  # (B, q)
        mask = attention_mask_4d(self.valid, q, bidirectional, self.runner.dtype)
        return self.runner(input_ids, mask, position_ids, self.cache, logits_index)

    def _appended(self, q: int) -> None:
        ones = torch.ones(self.batch, q, dtype=torch.bool, device=self.valid.device)
        self.valid = torch.cat([self.valid, ones], dim=1)
        self.next_pos = self.next_pos + q

    def flush(self, last_only: bool = True) -> torch.Tensor:
        """CAUSAL APPEND of the pending tokens; returns logits (B, V) of the last one, or (B, q, V)."""
        if not self.pending:
            raise RuntimeError("flush() with no pending tokens: nothing to run")
        ids, self.pending = self.pending, []
        logits = self._forward(ids, bidirectional=False, logits_index=1 if last_only else None)
        self._appended(len(ids))
        self.tokens.extend(ids)
        return logits[:, -1] if last_only else logits

    def peek(self, ids: Sequence[int] | torch.Tensor, logits_index: torch.Tensor) -> torch.Tensor:
        """DIDA PEEK: run ``ids`` bidirectionally after the cache, return logits at ``logits_index``
        (B, n, V), and leave the cache as it was (the block's KV is cropped away)."""
        if self.pending:
            raise RuntimeError("peek() needs every earlier token in the cache (pending is not empty)")
        logits = self._forward(ids, bidirectional=True, logits_index=logits_index)
        self.cache.crop(-len(ids))  # transformers 5.x: a negative count drops that many slots
        return logits

    @classmethod
    def prefill(cls, runner: ForwardCounter, prompt: Sequence[int]) -> tuple[KVState, torch.Tensor]:
        """A batch-1 state holding ``prompt``; returns it and the last position's logits (1, V)."""
        if len(prompt) == 0:
            raise ValueError("empty prompt")
        state = cls(runner, batch=1)
        state.pending = list(prompt)
        return state, state.flush()

    @classmethod
    def stack(cls, states: Sequence[KVState]) -> KVState:
        """One batched state from batch-1 states with no pending tokens (CFG: [cond, uncond]).

        Shorter caches are left-padded with zero keys/values that ``valid`` hides. The inputs are
        not modified (their tensors are copied by the concatenation).
        """
        from transformers import DynamicCache

        if any(s.pending or s.batch != 1 for s in states):
            raise RuntimeError("stack() needs batch-1 states with no pending tokens")
        longest = max(s.length for s in states)
        layers = []
        for layer_idx in range(len(states[0].cache.layers)):
            keys, values = [], []
            for s in states:
                k = s.cache.layers[layer_idx].keys  # (1, H_kv, T_s, D)
                v = s.cache.layers[layer_idx].values
                pad = longest - k.shape[2]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        out = cls(states[0].runner, batch=len(states))
        out.cache = DynamicCache(ddp_cache_data=layers)
        out.valid = torch.cat(
            [torch.nn.functional.pad(s.valid, (longest - s.length, 0), value=False) for s in states]
        )
        out.next_pos = torch.cat([s.next_pos for s in states])
        return out
