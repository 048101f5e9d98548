"""A tiny random Qwen3 and the compact layout: real components, random weights."""

from __future__ import annotations

import pytest
import torch

from model_runtime.layout import compact
from model_runtime.lm import LMConfig, build_lm


@pytest.fixture(scope="package")
def layout():
    return compact(num_text_words=40, num_visual_codes=64)


def tiny_lm(layout, attn: str = "eager", seed: int = 0):
    cfg = LMConfig(
        vocab_size=layout.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        intermediate_size=128,
    )  # fmt: skip
    model = build_lm(cfg, attn_implementation=attn, seed=seed)
    # Random init puts every logit near 0: sharpen so that sampling and greedy paths really differ.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0) if not cfg.tie_word_embeddings else model.model.embed_tokens.weight.mul_(8.0)
    return model


@pytest.fixture(scope="package")
def model(layout):
    return tiny_lm(layout, "sdpa")


@pytest.fixture(scope="package")
def eager_model(layout):
    return tiny_lm(layout, "eager")


