"""Sampling policy with exact numbers: temperature, top-k, top-p, greedy, the returned probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from model_runtime.decoding.sampling import filter_logits, gumbel_like, make_generator, sample


def test_temperature_divides_the_logits():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits * 2)
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2)
    assert filter_logits(logits.double(), 1.0).dtype == torch.float32


def test_top_k_keeps_exactly_k_and_zero_or_full_means_off():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 1.0]])
    kept = ~torch.isinf(filter_logits(logits, top_k=3))
    assert kept.tolist() == [[False, True, True, False, True]]
    assert not torch.isinf(filter_logits(logits, top_k=0)).any()
    assert not torch.isinf(filter_logits(logits, top_k=5)).any()
    assert (~torch.isinf(filter_logits(logits, top_k=1))).sum() == 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(probs)
    keep = lambda p: (~torch.isinf(filter_logits(logits, top_p=p))).tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert keep(0.51) == [True, True, False, False]
    assert keep(0.8) == [True, True, False, False]
    assert keep(0.81) == [True, True, True, False]
    assert keep(0.01) == [True, False, False, False]  # the most likely token is always kept
    assert keep(1.0) == [True, True, True, True]
    shuffled = torch.log(torch.tensor([0.05, 0.3, 0.5, 0.15]))
    assert (~torch.isinf(filter_logits(shuffled, top_p=0.8))).tolist() == [False, True, True, False]


def test_greedy_returns_argmax_and_softmax_probabilities():
    logits = torch.tensor([[1.0, 3.0, 0.0], [5.0, 1.0, 1.0]])
    ids, p_id, p_max = sample(logits, temperature=0.0, generator=None)
    soft = torch.softmax(logits, -1)
    assert ids.tolist() == [1, 0]
    torch.testing.assert_close(p_id, soft.max(-1).values)
    torch.testing.assert_close(p_max, soft.max(-1).values)


def test_sampled_probabilities_are_under_the_filtered_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    for seed in range(20):
        ids, p_id, p_max = sample(logits, temperature=1.0, top_k=2, generator=make_generator(seed))
        assert int(ids) in (0, 1)  # never a filtered id
        renorm = {0: 0.5 / 0.8, 1: 0.3 / 0.8}
        assert float(p_id) == pytest.approx(renorm[int(ids)], rel=1e-5)
        assert float(p_max) == pytest.approx(0.5 / 0.8, rel=1e-5)


def test_sampling_frequencies_follow_the_tempered_softmax():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1])).expand(6000, 3)
    ids, _, _ = sample(logits, temperature=1.0, generator=make_generator(3))
    freq = torch.bincount(ids, minlength=3).double() / 6000
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), atol=0.025, rtol=0)
    hot, _, _ = sample(logits, temperature=2.0, generator=make_generator(3))
    want = torch.softmax(torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)) / 2, -1)
    freq = torch.bincount(hot, minlength=3).double() / 6000
    torch.testing.assert_close(freq, want, atol=0.025, rtol=0)


def test_zero_mass_ids_are_never_drawn():
    logits = torch.tensor([0.0, float("-inf"), 0.0, float("-inf")]).expand(2000, 4)
    ids, p_id, _ = sample(logits, 1.0, generator=make_generator(0))
    assert set(ids.tolist()) == {0, 2} and torch.all(p_id == 0.5)


def test_generators_are_seeded():
    a = torch.rand(4, generator=make_generator(7))
    b = torch.rand(4, generator=make_generator(7))
    c = torch.rand(4, generator=make_generator(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert make_generator(None).initial_seed() != make_generator(None).initial_seed()


def test_gumbel_noise_is_float64_standard_gumbel():
    g = gumbel_like((20000,), make_generator(0))
    assert g.dtype == torch.float64 and g.shape == (20000,)
    assert float(g.mean()) == pytest.approx(0.5772, abs=0.03)  # Euler-Mascheroni
    assert float(g.var()) == pytest.approx(math.pi**2 / 6, rel=0.06)
    assert torch.isfinite(g).all()
    assert torch.equal(gumbel_like((5,), make_generator(1)), gumbel_like((5,), make_generator(1)))
