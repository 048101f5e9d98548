"""Autoregressive decoding: the KV-cached path equals recomputing everything every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_runtime.decoding import DecodeConstraint, ForwardCounter, KVState, make_generator
from model_runtime.decoding.ar import decode_image_ar, decode_text


def _start_image(model, layout, prompt):
    runner = ForwardCounter(model)
    state, _ = KVState.prefill(runner, prompt)
    cons = DecodeConstraint(layout, (3, 4))
    cons.advance(layout.boi)
    state.pending.append(layout.boi)
    return runner, state, cons


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ar_image_with_cache_equals_without(eager_model, layout, temperature):
    prompt = [layout.bos, layout.extra["user"]] + list(range(40, 60)) + [layout.extra["assistant"], 50]
    blocks, counts = [], []
    for use_cache in (True, False):
        runner, state, cons = _start_image(eager_model, layout, prompt)
        with torch.no_grad():
            block, conf = decode_image_ar(state, cons, 1.0, temperature, 0, 1.0, make_generator(3), use_cache=use_cache)
        blocks.append(block)
        counts.append(runner.counts["prefill"])
        assert len(conf) == 12 and cons.images_done == 1
    assert blocks[0] == blocks[1]
    codes = layout.parse_image(blocks[0])
    assert codes.shape == (3, 4)
    if temperature:  # sampling really happened (not all one code)
        assert len(np.unique(codes)) > 1


def test_text_decoding_respects_constraints_and_stops(model, layout):
    runner = ForwardCounter(model)
    with torch.no_grad():
        state, logits = KVState.prefill(runner, [layout.bos, 40, 41, 42])
        cons = DecodeConstraint(layout, (2, 2), max_images=0, max_text_tokens=6)
        conf = decode_text(state, logits, cons, 1.0, 0, 1.0, make_generator(0))
    assert cons.done and cons.tokens[-1] == layout.eos
    assert all(not layout.is_visual(t) for t in cons.tokens) and layout.boi not in cons.tokens
    assert len(conf) <= 6 and all(0 < c <= 1 for c in conf)
    # forced tokens ride along: 6 sampled tokens need 5 forwards after the prefill (EOS is forced)
    assert runner.counts["prefill"] == 1 + len(conf) - 1


def _greedy_text(model, layout, prompt, mentions=None):
    with torch.no_grad():
        state, logits = KVState.prefill(ForwardCounter(model), prompt)
        cons = DecodeConstraint(layout, (2, 2), max_images=0, max_text_tokens=4, mentions=mentions)
        decode_text(state, logits, cons, 0.0, 0, 1.0, None)
    return cons.tokens


def test_a_first_word_of_a_name_not_offered_is_kept_only_when_no_name_follows(model, layout):
    prompt = [layout.bos, layout.extra["user"], 40, 41, 42, layout.extra["assistant"]]
    first = _greedy_text(model, layout, prompt)[0]  # the model's own first word
    with torch.no_grad():
        meant = int(model(torch.tensor([prompt + [first]])).logits[0, -1].argmax())  # its next word
    other = next(t for t in range(40, 60) if t not in (meant, first))
    # The model goes on with the name: its first word is refused, as the mention rule always did.
    assert _greedy_text(model, layout, prompt, mentions=([[first, meant]], []))[0] != first
    # The model goes on with another phrase: the word stays, and the name can still not be finished.
    kept = _greedy_text(model, layout, prompt, mentions=([[first, other]], []))
    assert kept[0] == first and kept[1] != other
