"""Factorised visual-code embeddings: a training-time parametrisation of the LM's embedding table.

Why: an FSQ code is a tuple of per-channel levels (``levels=(8, 5, 5, 5)``: code
``c = d0 + 8*d1 + 40*d2 + 200*d3``). A plain embedding table learns each of the 1000 rows on its
own, so a small LM trained on a few hundred scenes memorises scene-specific code patterns instead
of learning what "red" or "cup" look like (measured: a 4-layer probe on code ids memorised 4000
TableClear scenes and stayed near chance on held-out ones, docs/training.md). Here the visual
rows are sums of per-channel digit embeddings, so codes that share levels share parameters and a
colour learned from some codes carries over to every code with the same levels:

    E[visual c] = sum_i D_i[digit_i(c)]  (+ R[c], a per-code residual, when ``residual``)

With tied embeddings the subgoal head scores a code as ``h . E[c] = sum_i h . D_i[digit_i(c)]``:
per-channel scores (a product distribution over the digits) plus the residual's per-code part.

The exported model is an ordinary ``Qwen3ForCausalLM``: :func:`materialize` writes the summed
table into ``model.embed_tokens.weight`` and drops the digit tables, so inference code, vLLM and
the Emu3.5 loading path never see this module.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FactorizedCodeEmbedding", "DIGIT_KEY", "apply_factorized_codes", "materialize"]

EMBED_KEY = "model.embed_tokens.weight"
DIGIT_KEY = "model.embed_tokens.digit_tables."  # + channel index


def code_digits(levels: tuple[int, ...]) -> torch.Tensor:
    """(num_codes, len(levels)) int64: the per-channel level index of every FSQ code, numbered as
    ``model_runtime.tokenizers.fsq.FSQ`` numbers them."""
    from model_runtime.tokenizers.fsq import FSQ

    fsq = FSQ(tuple(int(v) for v in levels))
    return fsq.codes_to_digits(torch.arange(int(fsq.levels.prod().item()), dtype=torch.int64))


def summed_table(weight: torch.Tensor, digit_tables, digits: torch.Tensor, visual_offset: int,
                 residual: bool) -> torch.Tensor:
    """(vocab, hidden): ``weight`` with its visual rows replaced by the digit sums (+ the rows
    themselves as the residual)."""
    lo, hi = visual_offset, visual_offset + digits.shape[0]
    visual = sum(t[digits[:, i]] for i, t in enumerate(digit_tables))  # (codes, hidden)
    if residual:
        visual = visual + weight[lo:hi]
    return torch.cat([weight[:lo], visual, weight[hi:]], dim=0)


class FactorizedCodeEmbedding(nn.Module):
    """The LM's input embedding (and, tied, its output head) with factorised visual rows.

    ``weight`` keeps the name and shape of ``nn.Embedding.weight`` (text rows, and the per-code
    residual of the visual rows); ``digit_tables[i]`` is (levels[i], hidden).
    """

    def __init__(self, weight: torch.Tensor, visual_offset: int, levels: tuple[int, ...], residual: bool,
                 init_std: float) -> None:
        super().__init__()
        self.visual_offset = int(visual_offset)
        self.levels = tuple(int(v) for v in levels)
        self.residual = bool(residual)
        self.register_buffer("digits", code_digits(self.levels), persistent=False)
        self.num_codes = int(self.digits.shape[0])
        if self.visual_offset + self.num_codes > weight.shape[0]:
            raise ValueError(
                f"factorised codes: {self.num_codes} codes from row {self.visual_offset} do not fit a "
                f"{weight.shape[0]}-row embedding table"
            )
        hidden = weight.shape[1]
        w = weight.detach().clone()
        if self.residual:  # the residual starts at zero: at step 0 every code is its digits' sum
            w[self.visual_offset : self.visual_offset + self.num_codes] = 0.0
        self.weight = nn.Parameter(w)
        # Each code sums len(levels) rows: scale so a code's embedding has the usual init std.
        scale = init_std / len(self.levels) ** 0.5
        self.digit_tables = nn.ParameterList([nn.Parameter(torch.randn(v, hidden) * scale) for v in self.levels])

    def table(self) -> torch.Tensor:
        """(vocab, hidden): the effective embedding table."""
        return summed_table(self.weight, self.digit_tables, self.digits, self.visual_offset, self.residual)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.table())  # (B, T) -> (B, T, hidden)


class _TiedHead(nn.Module):
    """lm_head tied to a FactorizedCodeEmbedding (holds no parameters of its own)."""

    def __init__(self, embedding: FactorizedCodeEmbedding) -> None:
        super().__init__()
        self._embedding = [embedding]  # a list: not registered as a submodule (no duplicate state keys)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self._embedding[0].table().t()  # (B, T, hidden) -> (B, T, vocab)


def apply_factorized_codes(model: nn.Module, visual_offset: int, levels: tuple[int, ...], residual: bool = True) -> nn.Module:
    """Swap a Qwen3ForCausalLM's input embedding for the factorised one (in place); a tied head
    follows it, an untied head (``LMConfig.tie_word_embeddings=False``) keeps its own rows."""
    base = model.model.embed_tokens
    emb = FactorizedCodeEmbedding(base.weight, visual_offset, levels, residual,
                                  float(getattr(model.config, "initializer_range", 0.02)))
    model.model.embed_tokens = emb
    if model.config.tie_word_embeddings:
        model.lm_head = _TiedHead(emb)
    return model


def materialize(weights: dict[str, torch.Tensor], visual_offset: int, levels: tuple[int, ...],
                residual: bool = True) -> dict[str, torch.Tensor]:
    """A factorised state dict -> the plain Qwen3 one (summed visual rows; digit tables dropped).

    A state dict without digit tables is returned unchanged.
    """
    keys = sorted((k for k in weights if k.startswith(DIGIT_KEY)), key=lambda k: int(k[len(DIGIT_KEY):]))
    if not keys:
        return dict(weights)
    if len(keys) != len(levels):
        raise ValueError(f"factorised checkpoint has {len(keys)} digit tables, the tokenizer has {len(levels)} channels")
    digits = code_digits(levels)
    for i, k in enumerate(keys):
        if tuple(weights[k].shape) != (levels[i], weights[EMBED_KEY].shape[1]):
            raise ValueError(f"{k}: shape {tuple(weights[k].shape)} does not fit levels {levels}")
    if visual_offset + digits.shape[0] > weights[EMBED_KEY].shape[0]:
        raise ValueError(f"factorised codes: {digits.shape[0]} codes from row {visual_offset} do not fit the table")
    with torch.no_grad():
        table = summed_table(weights[EMBED_KEY], [weights[k] for k in keys], digits, visual_offset, residual)
    out = {k: v for k, v in weights.items() if not k.startswith(DIGIT_KEY)}
    out[EMBED_KEY] = table.detach().clone()
    return out
