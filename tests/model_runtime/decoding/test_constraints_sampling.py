"""The constraint grammar and the samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_runtime.decoding import ConstraintError, DecodeConstraint, Phase, filter_logits, make_generator, sample
from model_runtime.layout import emu3, emu35


@pytest.mark.parametrize("preset", [emu35, emu3])
def test_image_block_is_forced_except_cells(preset):
    lay = preset()
    cons = DecodeConstraint(lay, (2, 3))
    text_mask = cons.allowed_mask(lay.vocab_size)
    assert not text_mask[lay.visual_offset :].any() and text_mask[lay.boi] and not text_mask[lay.eoi]
    with pytest.raises(ConstraintError):
        cons.advance(lay.visual_offset)  # a visual id in text
    cons.advance(lay.boi)
    emitted = [lay.boi]
    while cons.phase is Phase.IMAGE:
        forced = cons.forced()
        if forced is None:
            mask = cons.allowed_mask(lay.vocab_size)
            assert mask.sum() == lay.num_visual_codes and not mask[lay.eol]
            with pytest.raises(ConstraintError):
                cons.advance(lay.eol)
            forced = lay.visual_offset + 7
        cons.advance(forced)
        emitted.append(forced)
    assert lay.parse_image(emitted).tolist() == [[7, 7, 7], [7, 7, 7]]
    assert cons.images_done == 1 and not cons.allowed_mask(lay.vocab_size + 5)[lay.boi]  # max_images=1


def test_min_images_and_final_ids():
    from model_runtime.layout import compact

    lay = compact(10, 16)
    done = lay.extra["done"]
    cons = DecodeConstraint(lay, (1, 1), min_images=1, max_text_tokens=2, final_ids=[done], text_before_image=True)
    first = cons.allowed_mask(lay.vocab_size)
    assert first[done] and not first[lay.eos] and not first[lay.boi]
    cons.advance(lay.visual_offset - 1)  # a word
    assert not cons.allowed_mask(lay.vocab_size)[done] and cons.allowed_mask(lay.vocab_size)[lay.boi]
    cons.advance(lay.visual_offset - 2)
    assert cons.forced() == lay.boi  # text budget spent and an image is owed
    final = DecodeConstraint(lay, (1, 1), min_images=1, final_ids=[done])
    final.advance(done)
    assert final.forced() == lay.eos
    final.advance(lay.eos)
    assert final.done
    with pytest.raises(ConstraintError):
        final.allowed_mask(lay.vocab_size)


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [False, False, True, True]
    # top_p 0.7: 0.5 then 0.3 reaches 0.8 >= 0.7; the rest are dropped
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [False, False, True, True]
    assert torch.isinf(filter_logits(logits, top_p=0.4)).tolist() == [False, True, True, True]
    probs = torch.softmax(filter_logits(logits, temperature=0.5), -1)
    assert probs[0] > 0.5  # lower temperature sharpens


def test_sample_greedy_and_seeded():
    logits = torch.randn(100, 32, generator=torch.Generator().manual_seed(0))
    ids, p, pmax = sample(logits, temperature=0.0)
    assert torch.equal(ids, logits.argmax(-1)) and torch.allclose(p, pmax)
    a = sample(logits, 1.0, generator=make_generator(7))[0]
    b = sample(logits, 1.0, generator=make_generator(7))[0]
    c = sample(logits, 1.0, generator=make_generator(8))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    top1 = sample(logits, 1.0, top_k=1, generator=make_generator(1))[0]
    assert torch.equal(top1, logits.argmax(-1))
    # the empirical distribution follows the softmax
    draws = sample(torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20_000, 3), 1.0, generator=make_generator(2))[0]
    freq = np.bincount(draws.numpy(), minlength=3) / 20_000
    assert np.allclose(freq, [0.7, 0.2, 0.1], atol=0.02)


def test_banned_answers_block_only_their_last_token():
    from model_runtime.layout import compact

    lay = compact(num_text_words=20, num_visual_codes=16)
    w = lambda i: 32 + i  # noqa: E731  (compact word ids start after the 32 specials)
    done = lay.extra["done"]
    cons = DecodeConstraint(lay, (2, 2), final_ids=[done], banned=[[w(1), w(2), w(3)], [done]])
    assert not cons.allowed_mask(lay.vocab_size)[done] and not cons.is_allowed(done)  # "done" was rejected
    cons.advance(w(1))
    assert cons.allowed_mask(lay.vocab_size)[w(3)]  # w(3) only completes the banned answer after w(1) w(2)
    cons.advance(w(2))
    mask = cons.allowed_mask(lay.vocab_size)
    assert not mask[w(3)] and not cons.is_allowed(w(3)) and mask[w(4)]
    with pytest.raises(ConstraintError):
        cons.advance(w(3))
    cons.advance(w(4))
    assert cons.allowed_mask(lay.vocab_size)[w(3)]  # the answer already differs
    fresh = DecodeConstraint(lay, (2, 2), final_ids=[done])
    assert fresh.allowed_mask(lay.vocab_size)[done]  # the cached masks are not shared or mutated


def _mention_constraint(known, allowed, banned=()):
    from model_runtime.layout import compact

    lay = compact(num_text_words=20, num_visual_codes=16)
    return lay, DecodeConstraint(lay, (2, 2), banned=banned, mentions=(known, allowed))


def _free(lay, cons, words):
    """Which of ``words`` may come next; the mask and is_allowed must agree on every one."""
    mask = cons.allowed_mask(lay.vocab_size)
    out = {t for t in words if mask[t]}
    assert out == {t for t in words if cons.is_allowed(t)}
    return out


W = {w: 32 + i for i, w in enumerate(["red", "blue", "cup", "plate", "small", "block", "pick", "the", "in", "rack"])}


def test_mentions_only_allowed_names_and_finishes_them():
    known = [[W["red"], W["cup"]], [W["red"], W["plate"]], [W["blue"], W["cup"]], [W["blue"], W["plate"]]]
    lay, cons = _mention_constraint(known, allowed=[[W["red"], W["plate"]], [W["rack"]]])
    words = set(W.values())
    assert _free(lay, cons, words) == words - {W["blue"]}  # "blue ..." names nothing present; "cup" alone is no name
    for t in (W["pick"], W["the"], W["red"]):
        cons.advance(t)
    assert _free(lay, cons, words) == {W["plate"]}  # a started mention is finished with an allowed name
    cons.advance(W["plate"])
    assert _free(lay, cons, words) == words - {W["blue"]}


def test_longest_prefix_decides_and_nothing_allowed_bans_every_known_name():
    red_block, small_red_block = [W["red"], W["block"]], [W["small"], W["red"], W["block"]]
    lay, cons = _mention_constraint([red_block, small_red_block], allowed=[small_red_block])
    words = set(W.values())
    assert W["red"] not in _free(lay, cons, words) and W["small"] in _free(lay, cons, words)
    cons.advance(W["small"])
    assert _free(lay, cons, words) == {W["red"]}
    cons.advance(W["red"])
    assert _free(lay, cons, words) == {W["block"]}

    lay, cons = _mention_constraint([red_block, small_red_block], allowed=[])
    assert _free(lay, cons, words) == words - {W["red"], W["small"]}


def test_a_rejected_answer_is_never_forced():
    red_cup = [W["red"], W["cup"]]
    lay, cons = _mention_constraint([red_cup, [W["blue"], W["cup"]]], allowed=[red_cup], banned=[red_cup])
    cons.advance(W["red"])
    free = _free(lay, cons, set(W.values()))
    assert W["cup"] not in free and free  # the rejected opening stays banned, and something is left to say


def test_allowed_probability_honours_a_wish_for_a_name_only_when_one_is_present():
    known = [[W["red"], W["cup"]], [W["red"], W["plate"]], [W["blue"], W["cup"]], [W["blue"], W["plate"]]]
    probs = torch.zeros(64)
    probs[W["blue"]], probs[W["red"]], probs[W["the"]] = 0.6, 0.3, 0.1
    lay, cons = _mention_constraint(known, allowed=[[W["red"], W["cup"]]])
    assert cons.allowed_probability(probs) == pytest.approx(1.0)  # wants "blue": a red cup is there instead
    cons.advance(W["red"])
    probs2 = torch.zeros(64)
    probs2[W["plate"]], probs2[W["cup"]] = 0.8, 0.2
    assert cons.allowed_probability(probs2) == pytest.approx(1.0)  # finishing the present red cup's name
    lay, cons = _mention_constraint(known, allowed=[])
    assert cons.allowed_probability(probs) == pytest.approx(0.1)  # nothing to name: only "the" can be honoured


def test_a_first_word_that_may_open_another_phrase_is_looked_ahead_at():
    left, sleeve, side, bin_, cloth = 44, 45, 46, 47, 48  # ids beyond W's
    known = [[left, sleeve], [left, side], [cloth], [W["blue"], W["block"]]]
    lay, cons = _mention_constraint(known, allowed=[[W["blue"], W["block"]]])
    words = {left, sleeve, side, bin_, cloth, W["blue"]} | {W["the"]}
    assert left not in _free(lay, cons, words)  # banned until looked ahead at
    assert cons.maybe_name_starts() == {left}  # "cloth" is a whole name, "blue" is on offer
    says = torch.zeros(lay.vocab_size)
    says[sleeve] = 5.0
    assert cons.name_follows(left, says) and left not in _free(lay, cons, words)  # "left sleeve": a name
    says[bin_] = 9.0
    assert not cons.name_follows(left, says) and left in _free(lay, cons, words)  # "left bin": no name
    cons.advance(left)
    assert _free(lay, cons, words) & {sleeve, side} == set() and bin_ in _free(lay, cons, words)
    assert left not in _free(lay, cons, words) and cons.maybe_name_starts() == {left}  # looked at again


def test_a_first_word_banned_by_another_rule_is_not_looked_ahead_at():
    left, sleeve = 44, 45
    lay, cons = _mention_constraint([[left, sleeve]], allowed=[], banned=[[left]])  # "left" was rejected
    assert cons.maybe_name_starts() == set() and not cons.is_allowed(left)
