"""DiDA: cache/mask equivalences, schedule, determinism, and parseable output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emu_guide.types import DecodeMode
from model_runtime.backends.base import DecodeOptions
from model_runtime.decoding import (
    ForwardCounter,
    KVState,
    answer_grammar,
    attention_mask_4d,
    commit_counts,
    generate_answer,
    open_fraction,
)


def _prompt(layout, n: int = 30, seed: int = 0) -> list[int]:
    g = np.random.default_rng(seed)
    frame = g.integers(0, layout.num_visual_codes, size=(3, 4))
    words = g.integers(layout.text_vocab_size - 40, layout.text_vocab_size, size=n).tolist()
    return [layout.bos, layout.extra["user"]] + words + layout.serialize_image(frame) + [layout.extra["assistant"]]


def _dida_full_mask(prefix: int, block: int) -> torch.Tensor:
    """The DiDA mask over prefix + block as ONE sequence: causal prefix, block sees prefix and itself."""
    n = prefix + block
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[prefix:, prefix:] = True
    return torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


@pytest.mark.parametrize("which", ["eager_model", "model"])
def test_dida_peek_equals_full_forward_with_same_mask(request, layout, which):
    model = request.getfixturevalue(which)
    prompt = _prompt(layout)
    block = layout.serialize_image(np.arange(12).reshape(3, 4))
    block[8] = layout.mask_id  # some masked cells, as mid-refinement
    runner = ForwardCounter(model)
    with torch.no_grad():
        state, _ = KVState.prefill(runner, prompt)
        index = torch.arange(len(block))
        peek = state.peek(block, logits_index=index)[0]  # (L, V)
        assert state.length == len(prompt) and state.cache.get_seq_length() == len(prompt)  # block KV dropped
        ids = torch.tensor([prompt + block])
        full = model(input_ids=ids, attention_mask=_dida_full_mask(len(prompt), len(block)),
                     position_ids=torch.arange(ids.shape[1])[None]).logits[0, len(prompt):]  # fmt: skip
    torch.testing.assert_close(peek, full, atol=2e-5, rtol=1e-4)


def test_prefix_logits_unchanged_by_image_block(eager_model, layout):
    prompt = _prompt(layout)
    block = layout.serialize_image(np.arange(12).reshape(3, 4))
    with torch.no_grad():
        alone = eager_model(input_ids=torch.tensor([prompt])).logits[0]
        ids = torch.tensor([prompt + block])
        joint = eager_model(input_ids=ids, attention_mask=_dida_full_mask(len(prompt), len(block)),
                            position_ids=torch.arange(ids.shape[1])[None]).logits[0, : len(prompt)]  # fmt: skip
    torch.testing.assert_close(joint, alone, atol=2e-5, rtol=1e-4)


def test_stacked_cfg_state_equals_separate_states(eager_model, layout):
    """Left-padded [cond, uncond] batch gives each row the logits it gets alone."""
    cond, uncond = _prompt(layout, 30, seed=1), _prompt(layout, 5, seed=2)
    block = layout.serialize_image(np.arange(12).reshape(3, 4))
    runner = ForwardCounter(eager_model)
    index = torch.arange(len(block))
    with torch.no_grad():
        sc, _ = KVState.prefill(runner, cond)
        su, _ = KVState.prefill(runner, uncond)
        stacked = KVState.stack([sc, su])
        both = stacked.peek(block, index)
        stacked.pending = block[:5]
        both_append = stacked.flush()
        alone = [s.peek(block, index)[0] for s in (sc, su)]
        alone_append = []
        for s in (sc, su):
            s.pending = block[:5]
            alone_append.append(s.flush()[0])
    for row in range(2):
        torch.testing.assert_close(both[row], alone[row], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(both_append[row], alone_append[row], atol=2e-5, rtol=1e-4)


def test_attention_mask_4d_cases():
    valid = torch.tensor([[False, True, True]])
    causal = attention_mask_4d(valid, 2, bidirectional=False, dtype=torch.float32)[0, 0] == 0
    bidir = attention_mask_4d(valid, 2, bidirectional=True, dtype=torch.float32)[0, 0] == 0
    assert causal.tolist() == [[False, True, True, True, False], [False, True, True, True, True]]
    assert bidir.tolist() == [[False, True, True, True, True], [False, True, True, True, True]]


@pytest.mark.parametrize("steps", [1, 4, 8, 25])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_commit_counts_cover_every_cell(steps, schedule):
    for n in (1, 7, 144, 256):
        counts = commit_counts(n, steps, schedule)
        assert sum(counts) == n and len(counts) == steps
        assert all(c >= 0 for c in counts) and (n < steps or all(c >= 1 for c in counts))
    assert open_fraction(0, 8) == 1.0 and abs(open_fraction(8, 8)) < 1e-12
    # cosine commits few cells early and many late (MaskGIT)
    c = commit_counts(256, 8, "cosine")
    assert c[0] < c[-1]


def _options(**kw):
    base = dict(mode="dida", dida_steps=4, temperature=1.0, text_temperature=1.0, max_text_tokens=4, seed=0)
    base.update(kw)
    return DecodeOptions(**base)


GRAMMAR = dict(min_images=1, end_after_image=True, text_before_image=True)


def test_dida_forward_count_and_cfg_batching(model, layout):
    prompt = _prompt(layout)
    a = generate_answer(model, prompt, layout, (4, 4), _options(dida_steps=3), **GRAMMAR)
    assert a.forwards["image"] == 3 and a.image_codes.shape == (4, 4)
    assert "text_after_image" not in a.forwards  # EOS is forced after EOI: no tail forward
    g = generate_answer(model, prompt, layout, (4, 4), _options(dida_steps=3, guidance_scale=3.0),
                        uncond_prompt_ids=prompt[:2] + prompt[-20:], **GRAMMAR)  # fmt: skip
    assert g.forwards["image"] == 3 and g.forwards["uncond_prefill"] == 1  # cond+uncond in ONE forward per step
    ar = generate_answer(model, prompt, layout, (4, 4), _options(mode=DecodeMode.AR), **GRAMMAR)
    assert ar.forwards["image"] == 16  # one forward per cell


def test_same_seed_same_output_and_seeds_differ(model, layout):
    prompt = _prompt(layout)
    for init in ("mask", "uniform"):
        runs = [generate_answer(model, prompt, layout, (4, 4), _options(dida_init=init, seed=s), **GRAMMAR) for s in (5, 5, 6)]
        assert runs[0].tokens == runs[1].tokens
        assert runs[0].tokens != runs[2].tokens


@pytest.mark.parametrize("mode", ["dida", "ar"])
def test_constrained_output_always_parses(model, layout, mode):
    from model_runtime.prompt import parse_answer
    from model_runtime.text_tokenizer import WordTokenizer

    tok = WordTokenizer([f"w{i}" for i in range(40)])
    prompt = _prompt(layout)
    for seed in range(8):
        opts = _options(mode=mode, seed=seed, dida_init="uniform" if seed % 2 else "mask",
                        guidance_scale=2.0 if seed % 3 == 0 else 1.0, top_k=8 if seed % 4 == 1 else 0,
                        top_p=0.9 if seed % 4 == 2 else 1.0)  # fmt: skip
        a = generate_answer(model, prompt, layout, (3, 5), opts, uncond_prompt_ids=prompt[-18:],
                            **answer_grammar(layout))  # fmt: skip
        step = parse_answer(layout, tok, a.tokens, expected_grid=(3, 5))
        if not step.is_final:
            assert np.array_equal(step.codes, a.image_codes)
            assert 0.0 < a.image_confidence <= 1.0


def test_greedy_is_deterministic_without_a_seed(model, layout):
    prompt = _prompt(layout)
    opts = [_options(temperature=0.0, text_temperature=0.0, seed=None) for _ in range(2)]
    a, b = (generate_answer(model, prompt, layout, (4, 4), o, **GRAMMAR) for o in opts)
    assert a.tokens == b.tokens
