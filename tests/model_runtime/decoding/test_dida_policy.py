"""DiDA's and AR's decoding POLICY on a model whose logits we set (not only the output's shape).

``ScriptedModel`` stands in for the LM's forward and nothing else: ``KVState``, the grammar,
sampling, the schedule and the commit rule are the real ones. Cell i's logits are uniform over
``k_i`` visual codes (every other code at -1e4), so a cell's confidence, log(1/k_i), does not
depend on which of its codes is drawn, and the commit ORDER can be predicted exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from model_runtime.decoding import commit_counts, open_fraction
from model_runtime.decoding import dida as dida_mod
from model_runtime.decoding.ar import decode_image_ar, decode_text, guide
from model_runtime.decoding.cache import KVState
from model_runtime.decoding.constraints import DecodeConstraint, Phase
from model_runtime.decoding.dida import decode_image_dida


class ScriptedModel:
    """A forward pass that returns fixed logits per image cell and records what it was shown."""

    def __init__(self, layout, cell_logits: torch.Tensor, batch_rows: torch.Tensor | None = None) -> None:
        self.layout = layout
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.cell_logits = cell_logits  # (N, V) logits for cell j (read at block position j-1)
        self.batch_rows = batch_rows  # (B, N, V) per row (CFG) instead, when given
        self.calls: list[torch.Tensor] = []  # input ids of every forward (B, q)
        self.counts: dict[str, int] = {}
        self.phase = "image"

    def __call__(self, input_ids, attention_mask, position_ids, cache, logits_index=None):
        self.calls.append(input_ids.clone())
        b, q = input_ids.shape
        rows = self.batch_rows if self.batch_rows is not None else self.cell_logits[None].expand(b, -1, -1)
        if isinstance(logits_index, torch.Tensor):  # a DiDA PEEK: logits at block offsets (cell offset - 1)
            assert q == self.block_len and len(logits_index) == rows.shape[1]
            return rows.clone()
        # AR: one position; which cell comes next = how many visual ids were run so far in total
        seen = sum(int(self.layout.is_visual(t)) for c in self.calls[:-1] for t in c[0].tolist())
        seen += sum(int(self.layout.is_visual(t)) for t in input_ids[0].tolist())
        return rows[:, seen : seen + 1].clone()


def _uniform_cells(layout, ks: list[int], starts: list[int] | None = None) -> torch.Tensor:
    """(N, V): cell i uniform over visual codes starts[i] .. starts[i] + ks[i] - 1."""
    v = layout.vocab_size
    out = torch.full((len(ks), v), -1e4)
    starts = starts or [4 * i for i in range(len(ks))]
    for i, (k, s) in enumerate(zip(ks, starts)):
        out[i, layout.visual_offset + s : layout.visual_offset + s + k] = 0.0
    return out


def _start(layout, model: ScriptedModel, grid: tuple[int, int]) -> tuple[KVState, DecodeConstraint]:
    cons = DecodeConstraint(layout, grid)
    cons.advance(layout.boi)
    model.block_len = cons.block.length
    state = KVState(model, batch=1 if model.batch_rows is None else model.batch_rows.shape[0])
    state.pending = [layout.boi]
    return state, cons


def _commit_order(layout, model: ScriptedModel, cons: DecodeConstraint) -> list[list[int]]:
    """Which cells were newly committed before each forward after the first (from the ids shown)."""
    offs = cons.block.cell_offsets.tolist()
    shown = [set(j for j, o in enumerate(offs) if int(c[0, o]) != layout.mask_id) for c in model.calls]
    return [sorted(b - a) for a, b in zip(shown, shown[1:])]


# ---- the schedule -------------------------------------------------------------------------------


def test_open_fraction_values():
    assert open_fraction(1, 4, "cosine") == pytest.approx(math.cos(math.pi / 8))
    assert open_fraction(2, 4, "cosine") == pytest.approx(math.sqrt(0.5))
    assert open_fraction(1, 4, "linear") == pytest.approx(0.75)
    assert open_fraction(3, 4, "linear") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown DiDA schedule"):
        open_fraction(1, 4, "square")


@pytest.mark.parametrize(
    ("cells", "steps", "schedule", "expected"),
    [
        (12, 4, "cosine", [1, 3, 4, 4]),  # few early, many late (MaskGIT)
        (16, 4, "cosine", [2, 3, 5, 6]),
        (12, 4, "linear", [3, 3, 3, 3]),
        (16, 4, "linear", [4, 4, 4, 4]),
        (10, 3, "linear", [4, 3, 3]),  # open 6.67 -> floor: 4 committed first
        (3, 5, "cosine", [1, 1, 1, 0, 0]),  # at least one per step while any is open
        (5, 1, "cosine", [5]),
    ],
)
def test_commit_counts_per_schedule(cells, steps, schedule, expected):
    assert commit_counts(cells, steps, schedule) == expected


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decoder_commits_as_many_cells_per_step_as_the_schedule_says(layout, schedule):
    grid = (3, 4)
    model = ScriptedModel(layout, _uniform_cells(layout, [1 + (i % 3) for i in range(12)]))
    state, cons = _start(layout, model, grid)
    out, conf = decode_image_dida(state, cons, steps=4, schedule=schedule, temperature=0.0)
    assert len(model.calls) == 4  # one PEEK per step
    newly = _commit_order(layout, model, cons)
    expected = commit_counts(12, 4, schedule)
    assert [len(x) for x in newly] == expected[:-1]
    assert expected == ([1, 3, 4, 4] if schedule == "cosine" else [3, 3, 3, 3])
    # every cell committed at the end; the first PEEK saw only masks in the cells
    offs = cons.block.cell_offsets.tolist()
    assert all(int(model.calls[0][0, o]) == layout.mask_id for o in offs)
    assert all(layout.is_visual(out[o]) for o in offs)


# ---- what is committed, and in which order ------------------------------------------------------


def test_greedy_commits_the_most_confident_cells_first(layout):
    ks = [4, 1, 8, 2]  # confidences 1/4, 1, 1/8, 1/2 -> order 1, 3, 0, 2
    model = ScriptedModel(layout, _uniform_cells(layout, ks, starts=[0, 10, 20, 30]))
    state, cons = _start(layout, model, (2, 2))
    out, conf = decode_image_dida(state, cons, steps=4, schedule="linear", temperature=0.0, confidence_noise=5.0)
    assert _commit_order(layout, model, cons) == [[1], [3], [0]]  # noise is off at temperature 0
    offs = cons.block.cell_offsets.tolist()
    assert [out[o] - layout.visual_offset for o in offs] == [0, 10, 20, 30]  # argmax = first of the ties
    assert conf == pytest.approx([1 / 4, 1.0, 1 / 8, 1 / 2])  # max probability when committed
    # the block is left pending and the grammar consumed it
    assert state.pending == out and out[0] == layout.boi and out[-1] == layout.eoi
    assert cons.phase is Phase.TEXT and cons.images_done == 1


def test_sampled_without_noise_still_commits_by_confidence(layout):
    ks = [2, 8, 1, 4]  # order 2, 0, 3, 1
    for seed in range(5):
        model = ScriptedModel(layout, _uniform_cells(layout, ks, starts=[0, 10, 20, 30]))
        state, cons = _start(layout, model, (2, 2))
        g = torch.Generator().manual_seed(seed)
        out, conf = decode_image_dida(state, cons, steps=4, schedule="linear", temperature=1.0,
                                      generator=g, confidence_noise=0.0)  # fmt: skip
        assert _commit_order(layout, model, cons) == [[2], [0], [3]]
        offs = cons.block.cell_offsets.tolist()
        codes = [out[o] - layout.visual_offset for o in offs]
        assert all(s <= c < s + k for c, s, k in zip(codes, [0, 10, 20, 30], ks))  # drawn from each cell's support


def test_confidence_noise_anneals_linearly_to_zero(layout, monkeypatch):
    """score = log p + c * (1 - t/K) * gumbel. With the noise fixed to (0, 0, 1, 1) and c = 3 the
    scales are 2.25, 1.5, 0.75, and the order is 2, 0, 1 (then 3). A constant scale, (1 + t/K),
    (1 - (t-1)/K), half the scale or no noise each give another order."""
    ks = [1, 2, 4, 8]  # log p = 0, -0.69, -1.39, -2.08
    seen = []

    def fixed_noise(shape, generator, device="cpu"):
        seen.append(tuple(shape))
        return torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)

    monkeypatch.setattr(dida_mod, "gumbel_like", fixed_noise)
    model = ScriptedModel(layout, _uniform_cells(layout, ks))
    state, cons = _start(layout, model, (2, 2))
    decode_image_dida(state, cons, steps=4, schedule="linear", temperature=1.0,
                      generator=torch.Generator().manual_seed(0), confidence_noise=3.0)  # fmt: skip
    assert _commit_order(layout, model, cons) == [[2], [0], [1]]
    assert seen == [(4,)] * 3  # drawn at steps 1..3, not at the last step (scale 0)


def test_real_noise_reorders_early_commits_only_when_sampling(layout):
    ks = [1, 2, 4, 8]
    orders = set()
    for seed in range(12):
        model = ScriptedModel(layout, _uniform_cells(layout, ks))
        state, cons = _start(layout, model, (2, 2))
        decode_image_dida(state, cons, steps=4, schedule="linear", temperature=1.0,
                          generator=torch.Generator().manual_seed(seed), confidence_noise=8.0)  # fmt: skip
        orders.add(tuple(map(tuple, _commit_order(layout, model, cons))))
    assert len(orders) > 2  # Gumbel noise on the ranking: different seeds, different orders


def test_uniform_init_redraws_open_cells_and_keeps_committed_ones(layout):
    ks = [1, 2, 4, 8, 1, 2, 4, 8, 1]
    model = ScriptedModel(layout, _uniform_cells(layout, ks, starts=[0, 5, 10, 15, 20, 25, 30, 35, 40]))
    state, cons = _start(layout, model, (3, 3))
    out, _ = decode_image_dida(state, cons, steps=3, schedule="linear", init="uniform", temperature=0.0,
                               generator=torch.Generator().manual_seed(1))  # fmt: skip
    offs = cons.block.cell_offsets.tolist()
    first, second, third = ([int(c[0, o]) for o in offs] for c in model.calls)
    assert all(layout.is_visual(t) for t in first)  # no mask token under uniform init
    committed = [0, 4, 8]  # k = 1: the three most confident cells
    assert all(second[j] == out[offs[j]] for j in committed)
    opened = [j for j in range(9) if j not in committed]
    assert any(first[j] != second[j] for j in opened) and any(second[j] != third[j] for j in opened[3:])
    with pytest.raises(ValueError, match="init"):
        s2, c2 = _start(layout, ScriptedModel(layout, _uniform_cells(layout, ks)), (3, 3))
        decode_image_dida(s2, c2, init="zeros")


def test_dida_must_start_right_after_boi(layout):
    model = ScriptedModel(layout, _uniform_cells(layout, [1, 1, 1, 1]))
    state, cons = _start(layout, model, (2, 2))
    state.pending = []
    with pytest.raises(RuntimeError, match="right after BOI"):
        decode_image_dida(state, cons)


def test_cfg_guides_on_log_probs_with_the_scale(layout):
    """Row 0 (cond) prefers code 1, row 1 (uncond) prefers code 0 more strongly; guidance
    log p_u + s (log p_c - log p_u) keeps the conditional choice for s >= 1 and takes the
    unconditional one at s = 0.5."""
    v = layout.vocab_size
    vo = layout.visual_offset
    rows = torch.full((2, 4, v), -1e4)
    rows[0, :, vo] = 0.0
    rows[0, :, vo + 1] = 1.0  # cond: p(1) = 0.73
    rows[1, :, vo] = 2.0
    rows[1, :, vo + 1] = 0.0  # uncond: p(0) = 0.88
    for scale, code in ((1.0, 1), (3.0, 1), (0.5, 0)):
        model = ScriptedModel(layout, rows[0], batch_rows=rows)
        state, cons = _start(layout, model, (2, 2))
        out, conf = decode_image_dida(state, cons, steps=2, temperature=0.0, guidance_scale=scale)
        assert [out[o] - vo for o in cons.block.cell_offsets.tolist()] == [code] * 4
        assert model.calls[0].shape[0] == 2  # cond and uncond in one batched forward
    g = guide(rows[:, :1, vo : vo + 2], 0.5)[0]  # s < 1 leans to the unconditional model
    lp = torch.log_softmax(rows[:, 0, vo : vo + 2], -1)
    torch.testing.assert_close(g, lp[1] + 0.5 * (lp[0] - lp[1]))
    assert int(g.argmax()) == 0
    assert torch.equal(guide(rows[:1, :1, vo : vo + 2], 7.0)[0], rows[0, 0, vo : vo + 2])  # B = 1: no guidance


# ---- AR on the same scripted model ---------------------------------------------------------------


def test_ar_image_takes_each_cells_own_logits_in_order(layout):
    ks = [1, 2, 1, 3]
    model = ScriptedModel(layout, _uniform_cells(layout, ks, starts=[7, 3, 11, 0]))
    state, cons = _start(layout, model, (2, 2))
    block, conf = decode_image_ar(state, cons, 1.0, 0.0, 0, 1.0, None)
    offs = cons.block.cell_offsets.tolist()
    assert [block[o] - layout.visual_offset for o in offs] == [7, 3, 11, 0]
    assert conf == pytest.approx([1.0, 0.5, 1.0, 1 / 3])
    assert len(model.calls) == 4 and block[-1] == layout.eoi  # one forward per cell, structure forced
    assert cons.phase is Phase.TEXT and cons.images_done == 1


def test_decode_text_samples_under_the_grammar_and_leaves_the_last_token_pending(layout):
    v = layout.vocab_size
    word = layout.text_vocab_size - 5
    logits = torch.full((1, v), -1e4)
    logits[0, layout.mask_id] = 50.0  # the model wants the mask token: the grammar forbids it in text
    logits[0, word] = 0.0
    logits[0, layout.eos] = -1.0

    class Fixed(ScriptedModel):
        def __call__(self, input_ids, attention_mask, position_ids, cache, logits_index=None):
            self.calls.append(input_ids.clone())
            out = logits.clone()
            if len(self.calls) >= 3:  # after two words the model ends the answer
                out[0, layout.eos] = 10.0
            return out[:, None]

    model = Fixed(layout, logits)
    state = KVState(model)
    cons = DecodeConstraint(layout, (2, 2))
    mass: list[float] = []
    conf = decode_text(state, logits, cons, 0.0, 0, 1.0, None, allowed_mass=mass)
    assert cons.tokens == [word, word, word, layout.eos]
    assert state.pending == [layout.eos]  # the earlier tokens went through the model
    assert len(conf) == 4 and len(mass) == 4
    assert mass[0] < 1e-9  # the model's own mass was on the forbidden mask token
