"""Factorised visual-code embeddings: digits, training, and the plain-Qwen3 export."""

from __future__ import annotations

import pytest
import torch

from finetune_embodied.train.factorized_codes import (
    DIGIT_KEY,
    FactorizedCodeEmbedding,
    apply_factorized_codes,
    code_digits,
    materialize,
)
from model_runtime.lm import LMConfig, build_lm
from model_runtime.tokenizers.fsq import FSQ

LEVELS = (8, 5, 5, 5)
TEXT_ROWS = 40
CFG = LMConfig(vocab_size=TEXT_ROWS + 1000 + 3, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
               head_dim=16, intermediate_size=64)


def test_digits_are_the_fsq_levels_of_each_code():
    fsq = FSQ(LEVELS)
    codes = torch.arange(1000).view(1, 10, 100)
    levels = fsq.codes_to_levels(codes)[0].reshape(len(LEVELS), -1).t()  # (1000, 4) in [-1, 1]
    digits = code_digits(LEVELS)
    half = torch.tensor([v // 2 for v in LEVELS], dtype=torch.float32)
    torch.testing.assert_close((digits.float() - half) / half, levels)


@pytest.mark.parametrize("residual,tied", [(True, True), (False, True), (False, False)])
def test_training_updates_digits_and_the_export_is_a_plain_qwen3_with_equal_logits(residual, tied):
    cfg = LMConfig(**{**CFG.__dict__, "tie_word_embeddings": tied})
    model = apply_factorized_codes(build_lm(cfg), TEXT_ROWS, LEVELS, residual=residual).train()
    assert isinstance(model.model.embed_tokens, FactorizedCodeEmbedding)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, CFG.vocab_size, (2, 12))
    before = [t.detach().clone() for t in model.model.embed_tokens.digit_tables]
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].reshape(-1, CFG.vocab_size),
                                                 ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(not torch.equal(b, t) for b, t in zip(before, model.model.embed_tokens.digit_tables))

    state = model.state_dict()
    assert sum(k.startswith(DIGIT_KEY) for k in state) == len(LEVELS) and ("lm_head.weight" in state) != tied
    plain = build_lm(cfg)
    missing, unexpected = plain.load_state_dict(materialize(state, TEXT_ROWS, LEVELS, residual=residual), strict=False)
    assert missing == (["lm_head.weight"] if tied else []) and not unexpected  # tied: the head is the embedding
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits)


def test_codes_that_share_digits_share_parameters():
    """The point of the factorisation: a code's row moves when another code with its digits trains."""
    model = apply_factorized_codes(build_lm(CFG), TEXT_ROWS, LEVELS, residual=False).train()
    emb = model.model.embed_tokens
    before = emb.table().detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    code = 1 + 8 * 2 + 40 * 3 + 200 * 4  # digits (1, 2, 3, 4)
    loss = emb(torch.tensor([[TEXT_ROWS + code]])).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    moved = (emb.table().detach() - before).abs().sum(-1) > 0
    sibling = 1 + 8 * 0 + 40 * 0 + 200 * 0  # shares digit 0 only
    stranger = 0 + 8 * 0 + 40 * 0 + 200 * 0  # shares no digit
    assert moved[TEXT_ROWS + code] and moved[TEXT_ROWS + sibling] and not moved[TEXT_ROWS + stranger]
    assert not moved[:TEXT_ROWS].any()  # text rows are untouched


def test_clear_errors():
    with pytest.raises(ValueError, match="do not fit"):
        apply_factorized_codes(build_lm(CFG), CFG.vocab_size - 10, LEVELS)
    state = apply_factorized_codes(build_lm(CFG), TEXT_ROWS, LEVELS).state_dict()
    with pytest.raises(ValueError, match="digit tables"):
        materialize(state, TEXT_ROWS, (8, 5, 25))
    plain = build_lm(CFG).state_dict()
    assert materialize(plain, TEXT_ROWS, LEVELS).keys() == plain.keys()  # nothing to materialise


def test_visual_codes_need_an_fsq_tokenizer(tiny_lm):
    from finetune_embodied.train.loop import train

    with pytest.raises(ValueError, match="needs an FSQ vision tokenizer"):
        train(tiny_lm("run", "visual_codes=digits"), progress=False)
    with pytest.raises(ValueError, match="visual_codes must be one of"):
        tiny_lm("run2", "visual_codes=hashed")
    with pytest.raises(ValueError, match="use one or the other"):
        tiny_lm("run3", "visual_codes=digits", "visual_embedding_init=tokenizer")
