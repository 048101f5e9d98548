"""Every rule of ``DecodeConstraint``, in text and in image positions, token by token.

Each state's legal set is written out from the rule (docs/decoding.md, "The grammar") and
compared with BOTH ``allowed_mask`` (what decoders sample from) and ``is_allowed`` (what
``advance`` enforces), over the whole vocabulary.
"""

from __future__ import annotations

import pytest
import torch

from model_runtime.decoding import ConstraintError, DecodeConstraint, Phase
from model_runtime.layout import compact, emu3

LAY = compact(num_text_words=40, num_visual_codes=64)
V = LAY.vocab_size
WORD = LAY.text_vocab_size - 1  # a plain word id
STRUCTURAL = {LAY.pad, LAY.mask_id, LAY.bos, LAY.img, LAY.eoi, LAY.eol, LAY.eof}
VISUAL = set(range(LAY.visual_offset, LAY.visual_offset + LAY.num_visual_codes))


def legal(cons: DecodeConstraint, vocab: int = V) -> set[int]:
    """The legal next ids; asserts that the mask and ``is_allowed`` agree on every id."""
    mask = cons.allowed_mask(vocab)
    from_mask = {int(i) for i in torch.nonzero(mask).flatten()}
    if cons.forced() is None:
        from_is_allowed = {t for t in range(vocab) if cons.is_allowed(t)}
        assert from_mask == from_is_allowed
    return from_mask


def plain_text(limit: int | None = None) -> set[int]:
    """Text ids the tokenizer decodes, plus EOS and BOI, minus the structural ones."""
    return (set(range(LAY.visual_offset if limit is None else limit)) | {LAY.eos, LAY.boi}) - STRUCTURAL


def test_text_position_default_rules():
    cons = DecodeConstraint(LAY, (2, 3))
    got = legal(cons)
    assert got == plain_text()
    for t in (*STRUCTURAL, LAY.visual_offset, LAY.visual_offset + 63):
        assert t not in got and not cons.is_allowed(t)
        with pytest.raises(ConstraintError):
            DecodeConstraint(LAY, (2, 3)).advance(t)
    # a model whose vocabulary is wider than the layout: the extra ids are never legal
    assert legal(cons, V + 7) == plain_text()
    assert not cons.is_allowed(V + 3) and not cons.is_allowed(-1)


def test_mask_token_is_illegal_in_text_but_every_cell_takes_only_visual_ids():
    cons = DecodeConstraint(LAY, (1, 2))
    assert LAY.mask_id not in legal(cons)
    cons.advance(WORD)
    assert LAY.mask_id not in legal(cons)
    cons.advance(LAY.boi)
    while cons.phase is Phase.IMAGE:
        f = cons.forced()
        if f is None:
            assert legal(cons) == VISUAL
            assert not cons.is_allowed(LAY.mask_id) and not cons.is_allowed(WORD) and not cons.is_allowed(LAY.eos)
            f = LAY.visual_offset + 5
        cons.advance(f)


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (3, 2)])
def test_image_positions_force_the_structure_and_return_to_text(grid):
    cons = DecodeConstraint(LAY, grid, max_images=2)
    cons.advance(LAY.boi)
    assert cons.at_image_start and cons.phase is Phase.IMAGE
    block = LAY.image_block(*grid)
    fixed = dict(zip(block.fixed_offsets.tolist(), block.fixed_ids.tolist()))
    cells = set(block.cell_offsets.tolist())
    assert len(cells) == grid[0] * grid[1]
    for off in range(1, block.length):
        assert cons.offset == off
        if off in fixed:
            assert cons.forced() == fixed[off]
            assert legal(cons) is not None  # the mask still answers
            wrong = LAY.visual_offset if fixed[off] != LAY.visual_offset else LAY.eol
            assert not cons.is_allowed(wrong) and cons.is_allowed(fixed[off])
            cons.advance(fixed[off])
        else:
            assert off in cells and cons.forced() is None and legal(cons) == VISUAL
            cons.advance(LAY.visual_offset + off % LAY.num_visual_codes)
    assert cons.phase is Phase.TEXT and cons.offset == 0 and cons.images_done == 1 and cons.text_run == 0
    assert fixed[block.length - 1] == LAY.eoi and list(fixed.values()).count(LAY.eol) == grid[0] - 1
    assert LAY.img in fixed.values()
    assert legal(cons) == plain_text()  # a second image is still allowed (max_images=2)
    assert LAY.parse_image(cons.tokens).shape == grid


def test_emu3_end_of_frame_is_forced_too():
    lay = emu3()
    cons = DecodeConstraint(lay, (1, 2))
    assert not cons.allowed_mask(lay.vocab_size)[lay.eof]
    cons.advance(lay.boi)
    forced = []
    while cons.phase is Phase.IMAGE:
        f = cons.forced()
        forced.append(f)
        cons.advance(lay.visual_offset if f is None else f)
    assert lay.eof in forced and forced[-1] == lay.eoi and forced.count(None) == 2


def test_max_images_removes_boi_and_min_images_removes_eos():
    cons = DecodeConstraint(LAY, (1, 1), max_images=1, min_images=1)
    assert legal(cons) == plain_text() - {LAY.eos}  # an image is owed
    cons.advance_all([LAY.boi, *[t if t is not None else LAY.visual_offset for t in _block_tokens((1, 1))]])
    assert cons.images_done == 1
    assert legal(cons) == plain_text() - {LAY.boi}  # no image left to write; EOS legal now
    cons.advance(LAY.eos)
    assert cons.done and not cons.is_allowed(LAY.eos) and not cons.is_allowed(WORD)
    with pytest.raises(ConstraintError, match="complete"):
        cons.allowed_mask(V)
    with pytest.raises(ValueError, match="min_images"):
        DecodeConstraint(LAY, (1, 1), max_images=1, min_images=2)
    with pytest.raises(ValueError, match="min_images"):
        DecodeConstraint(LAY, (1, 1), min_images=-1)


def _block_tokens(grid):
    """The block after BOI with None in the cells (the caller fills them)."""
    block = LAY.image_block(*grid)
    fixed = dict(zip(block.fixed_offsets.tolist(), block.fixed_ids.tolist()))
    return [fixed.get(o) for o in range(1, block.length)]


def test_forbid_in_text_and_text_id_limit():
    forbidden = [LAY.extra["user"], LAY.extra["assistant"]]
    cons = DecodeConstraint(LAY, (1, 1), forbid_in_text=forbidden, text_id_limit=50)
    assert legal(cons) == plain_text(50) - set(forbidden)
    assert not cons.is_allowed(50) and cons.is_allowed(49)
    # a limit beyond the visual offset is cut at the visual offset
    wide = DecodeConstraint(LAY, (1, 1), text_id_limit=10_000)
    assert legal(wide) == plain_text()


def test_final_marker_only_opens_the_answer_and_forces_eos():
    done = LAY.extra["done"]
    cons = DecodeConstraint(LAY, (1, 1), final_ids=[done], text_id_limit=LAY.extra["user"])
    assert legal(cons) == plain_text(LAY.extra["user"]) | {done}  # a special: legal beyond the text limit
    cons.advance(10)
    assert done not in legal(cons)
    fin = DecodeConstraint(LAY, (1, 1), final_ids=[done], min_images=1)
    fin.advance(done)
    assert fin.forced() == LAY.eos and fin.is_allowed(LAY.eos) and not fin.is_allowed(WORD)
    fin.advance(LAY.eos)
    assert fin.done


def test_end_after_image_forces_eos():
    cons = DecodeConstraint(LAY, (1, 1), end_after_image=True, max_images=2)
    assert cons.forced() is None
    cons.advance(LAY.boi)
    for t in _block_tokens((1, 1)):
        cons.advance(LAY.visual_offset if t is None else t)
    assert cons.forced() == LAY.eos and not cons.is_allowed(WORD) and not cons.is_allowed(LAY.boi)


def test_text_before_image_bans_boi_at_the_start_of_each_text_run():
    cons = DecodeConstraint(LAY, (1, 1), text_before_image=True, max_images=2)
    assert legal(cons) == plain_text() - {LAY.boi}
    cons.advance(WORD)
    assert legal(cons) == plain_text()
    cons.advance(LAY.boi)
    for t in _block_tokens((1, 1)):
        cons.advance(LAY.visual_offset if t is None else t)
    assert legal(cons) == plain_text() - {LAY.boi}  # a new text run after the image


@pytest.mark.parametrize("owed", [True, False])
def test_max_text_tokens_forces_boi_when_an_image_is_owed_else_eos(owed):
    cons = DecodeConstraint(LAY, (1, 1), max_text_tokens=3, min_images=1 if owed else 0, max_images=2)
    for _ in range(2):
        assert cons.forced() is None
        cons.advance(WORD)
    assert cons.forced() is None  # 2 < 3
    cons.advance(WORD)
    assert cons.forced() == (LAY.boi if owed else LAY.eos)
    assert not cons.is_allowed(WORD)
    if owed:  # the budget is per text run: it starts again after the image
        cons.advance(LAY.boi)
        for t in _block_tokens((1, 1)):
            cons.advance(LAY.visual_offset if t is None else t)
        assert cons.forced() is None and cons.text_run == 0


def test_banned_answer_only_in_the_opening_run():
    a, b = WORD, WORD - 1
    cons = DecodeConstraint(LAY, (1, 1), banned=[[a, b]], max_images=2)
    cons.advance(a)
    assert b not in legal(cons) and a in legal(cons)
    other = DecodeConstraint(LAY, (1, 1), banned=[[a, b]])
    other.advance(b)
    assert b in legal(other)  # only the banned sequence's own prefix blocks it
    after = DecodeConstraint(LAY, (1, 1), banned=[[LAY.boi, *[t or LAY.visual_offset for t in _block_tokens((1, 1))], a, b]])
    assert after.banned  # an opening through an image is not enforced past the image
    after.advance(LAY.boi)
    for t in _block_tokens((1, 1)):
        after.advance(LAY.visual_offset if t is None else t)
    after.advance(a)
    assert b in legal(after)


def test_masks_are_cached_per_state_kind_and_mask_logits_uses_them():
    cons = DecodeConstraint(LAY, (1, 1))
    logits = torch.zeros(V)
    masked = cons.mask_logits(logits)
    assert torch.isinf(masked[LAY.mask_id]) and masked[WORD] == 0 and torch.isinf(masked[LAY.visual_offset])
    cons.advance(WORD)
    cons.advance(LAY.boi)
    cons.advance(cons.forced())
    while cons.forced() is not None:
        cons.advance(cons.forced())
    cell = cons.mask_logits(logits)
    assert torch.isinf(cell[WORD]) and cell[LAY.visual_offset] == 0  # the image mask, not the cached text one
