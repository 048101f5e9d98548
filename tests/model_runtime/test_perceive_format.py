"""The "perceive" answer format: perception text round trip, its parser's errors, and the grammar."""

from __future__ import annotations

import numpy as np
import pytest

from model_runtime.decoding import answer_grammar
from model_runtime.decoding.constraints import ConstraintError, DecodeConstraint
from model_runtime.layout import compact
from model_runtime.prompt import (
    ParseError,
    answer_opening_ids,
    build_answer,
    build_training_sequence,
    format_perception,
    parse_answer,
    parse_perception,
    perception_texts,
    position_cell,
)
from model_runtime.text_tokenizer import WordTokenizer

STEPS = ["pick up the red cup", "put the red cup in the rack", "pick up the teal fork"]
SEEN = [{"name": "red cup", "cell": "left back"}, {"name": "teal fork", "cell": "middle front"}]


@pytest.fixture
def pair():
    tok = WordTokenizer.build(STEPS + ["clear the table"] + perception_texts())
    return compact(tok.vocab_size, 16), tok


def test_perception_text_round_trip():
    text = format_perception(SEEN, None)
    assert text == "see red cup left back , teal fork middle front holding nothing ."
    p = parse_perception(text)
    assert p["holding"] is None
    assert [(o["name"], o["colour"], o["kind"], o["cell"]) for o in p["objects"]] == [
        ("red cup", "red", "cup", "left back"), ("teal fork", "teal", "fork", "middle front")]
    empty = format_perception([], "blue block")
    assert empty == "see nothing holding blue block ."
    assert parse_perception(empty) == {"objects": [], "holding": "blue block"}


def test_position_cell_splits_the_frame():
    assert position_cell(0, 0, 96, 96) == "left back"
    assert position_cell(95, 95, 96, 96) == "right front"
    assert position_cell(48, 40, 96, 96) == "middle back"
    assert position_cell(-3, 60, 96, 96) == "left front"  # just outside the frame: clamped
    with pytest.raises(ValueError):
        position_cell(1, 1, 0, 96)


@pytest.mark.parametrize("bad, why", [
    ("red cup left back holding nothing .", "does not start with 'see'"),
    ("see red cup left back holding nothing", "does not end with"),
    ("see red cup left back .", "exactly one 'holding'"),
    ("see red cup left back holding .", "names nothing after 'holding'"),
    ("see red cup holding nothing .", "is not '<name> <column> <row>'"),
    ("see red cup back left holding nothing .", "is not '<name> <column> <row>'"),
    ("see red cup left back , holding nothing .", "is not '<name> <column> <row>'"),
    ("see holding nothing .", "lists no objects"),
])
def test_parse_perception_errors_say_what_is_wrong(bad, why):
    with pytest.raises(ParseError, match=why):
        parse_perception(bad)


def test_format_perception_refuses_bad_input():
    with pytest.raises(ValueError, match="cell"):
        format_perception([{"name": "red cup", "cell": "up left"}], None)
    with pytest.raises(ValueError, match="keyword"):
        format_perception([{"name": "see cup", "cell": "left back"}], None)
    with pytest.raises(ValueError, match="'name' and 'cell'"):
        format_perception([{"name": "red cup"}], None)


def test_answer_round_trip_step_and_final(pair):
    layout, tok = pair
    codes = np.arange(6).reshape(2, 3) % 16
    perception = format_perception(SEEN, None)
    ids = build_answer(layout, tok, STEPS[0], codes, False, perception=perception)
    parsed = parse_answer(layout, tok, ids, expected_grid=(2, 3), answer_format="perceive")
    assert parsed.text == STEPS[0] and not parsed.is_final
    np.testing.assert_array_equal(parsed.codes, codes)
    assert [o["name"] for o in parsed.perception["objects"]] == ["red cup", "teal fork"]
    final = build_answer(layout, tok, None, None, True, perception=format_perception([], None))
    parsed = parse_answer(layout, tok, final, answer_format="perceive")
    assert parsed.is_final and parsed.perception == {"objects": [], "holding": None}
    # The plain format is unchanged and has no perception.
    plain = parse_answer(layout, tok, build_answer(layout, tok, STEPS[0], codes, False))
    assert plain.perception is None and plain.text == STEPS[0]


def test_parse_answer_text_only_reads_the_answer_cut_before_its_image(pair):
    layout, tok = pair
    codes = np.arange(6).reshape(2, 3) % 16
    for perception in (format_perception(SEEN, None), None):
        ids = build_answer(layout, tok, STEPS[0], codes, False, perception=perception)
        cut = ids[: ids.index(layout.boi)]
        fmt = "perceive" if perception else "step"
        parsed = parse_answer(layout, tok, cut, answer_format=fmt, text_only=True)
        assert parsed.text == STEPS[0] and parsed.codes is None and not parsed.is_final
        assert (parsed.perception is not None) == (perception is not None)
        with pytest.raises(ParseError, match="no subgoal image"):  # the full parse still wants its image
            parse_answer(layout, tok, cut + [layout.eos], answer_format=fmt)
        with pytest.raises(ParseError, match="cut before its image"):
            parse_answer(layout, tok, ids, answer_format=fmt, text_only=True)


def test_parse_answer_perceive_errors(pair):
    layout, tok = pair
    codes = np.zeros((2, 3), np.int64)
    plain = build_answer(layout, tok, STEPS[0], codes, False)
    with pytest.raises(ParseError, match="no perception marker"):
        parse_answer(layout, tok, plain, answer_format="perceive")
    only = tok.encode(format_perception(SEEN, None)) + [layout.eos]
    with pytest.raises(ParseError, match="no step and no done marker"):
        parse_answer(layout, tok, only, answer_format="perceive")
    garbled = tok.encode("see red cup holding nothing .") + build_answer(layout, tok, STEPS[0], codes, False)
    with pytest.raises(ParseError, match="<name> <column> <row>"):
        parse_answer(layout, tok, garbled, answer_format="perceive")
    with pytest.raises(ValueError, match="unknown answer format"):
        parse_answer(layout, tok, plain, answer_format="think")


def test_build_answer_refuses_a_malformed_perception_and_a_vocabulary_without_its_words(pair):
    layout, tok = pair
    codes = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="malformed perception"):
        build_answer(layout, tok, STEPS[0], codes, False, perception="see red cup holding nothing .")
    small = WordTokenizer.build(STEPS)
    with pytest.raises(ValueError, match="needs the words"):
        build_answer(compact(small.vocab_size, 16), small, STEPS[0], codes, False,
                     perception=format_perception(SEEN, None))


def test_training_sequence_trains_the_perception(pair):
    layout, tok = pair
    codes = np.zeros((2, 3), np.int64)
    perception = format_perception(SEEN, "red cup")
    seq = build_training_sequence(layout, tok, "clear the table", [], codes, STEPS[2], codes, False,
                                  perception=perception)
    answer = seq.input_ids[seq.prompt_length:]
    n = len(tok.encode(perception))
    assert parse_perception(tok.decode(answer[:n])) == parse_perception(perception)
    assert (seq.loss_weights[seq.prompt_length:seq.prompt_length + n] == 1.0).all()


def _constraint(layout, tok, **kw):
    return DecodeConstraint(layout, (2, 3), **answer_grammar(layout, "perceive", tok), **kw)


def test_grammar_admits_perceive_answers(pair):
    layout, tok = pair
    codes = np.arange(6).reshape(2, 3) % 16
    for ids in (build_answer(layout, tok, STEPS[0], codes, False, perception=format_perception(SEEN, None)),
                build_answer(layout, tok, None, None, True, perception=format_perception([], "red cup"))):
        cons = _constraint(layout, tok)
        cons.advance_all(ids)
        assert cons.done


def test_grammar_keeps_the_perception_before_the_step(pair):
    layout, tok = pair
    done, marker = layout.extra["done"], tok.encode(".")[0]
    cons = _constraint(layout, tok)
    for t in (layout.eos, layout.boi, done, marker):  # nothing but text opens the answer
        assert not cons.is_allowed(t)
    mask = cons.allowed_mask(layout.vocab_size)
    assert not mask[[layout.eos, layout.boi, done, marker]].any()
    cons.advance_all(tok.encode("see nothing holding nothing"))
    assert cons.in_perception and cons.is_allowed(marker)
    assert not cons.is_allowed(done) and not cons.is_allowed(layout.eos)
    cons.advance(marker)
    assert not cons.in_perception
    assert cons.is_allowed(done) and not cons.is_allowed(layout.boi)  # the step opens: <done> or words
    assert not cons.is_allowed(marker) and not cons.allowed_mask(layout.vocab_size)[marker]  # one perception
    for word in ("see", "holding"):  # perception-only words stay out of the step sentence
        wid = tok.encode(word)[0]
        assert not cons.is_allowed(wid) and not cons.allowed_mask(layout.vocab_size)[wid]
    assert cons.allowed_mask(layout.vocab_size)[done]
    cons.advance_all(tok.encode("pick up"))
    assert not cons.is_allowed(done)
    with pytest.raises(ConstraintError):
        cons.advance(done)


def test_grammar_forces_the_marker_when_the_perception_runs_long(pair):
    layout, tok = pair
    grammar = answer_grammar(layout, "perceive", tok)
    grammar.pop("perception_grammar")  # without the word grammar only the token budget ends it
    cons = DecodeConstraint(layout, (2, 3), max_text_tokens=3, **grammar)
    cons.advance_all(tok.encode("see red cup"))
    assert cons.forced() == tok.encode(".")[0]


def _ids(tok, text):
    return [int(t) for t in tok.encode(text)]


def test_perception_grammar_walks_the_format_word_by_word(pair):
    layout, tok = pair
    cons = _constraint(layout, tok)
    assert cons.forced() == _ids(tok, "see")[0]  # one legal opening: no forward pass needed
    cons.advance_all(_ids(tok, "see"))
    left, back, comma, holding = (_ids(tok, w)[0] for w in ("left", "back", ",", "holding"))
    # a name or "nothing" comes first; a name may start with a column word ("left sleeve"), not a row
    assert cons.is_allowed(left) and not cons.is_allowed(back) and not cons.is_allowed(holding)
    cons.advance_all(_ids(tok, "red cup"))
    assert cons.is_allowed(left) and not cons.is_allowed(back) and not cons.is_allowed(comma)
    cons.advance_all(_ids(tok, "left"))
    # the row (then "left" was the column), or a name word (then it was part of the name); not a column
    for word, ok in (("back", True), ("front", True), ("cup", True), ("right", False), (",", False),
                     ("holding", False)):
        assert cons.is_allowed(_ids(tok, word)[0]) == ok, word
    cons.advance_all(_ids(tok, "back"))
    assert cons.is_allowed(comma) and cons.is_allowed(holding) and not cons.is_allowed(_ids(tok, "red")[0])
    cons.advance_all(_ids(tok, "holding"))
    assert not cons.is_allowed(_ids(tok, ".")[0])  # "holding" needs "nothing" or a name
    cons.advance_all(_ids(tok, "nothing"))
    assert cons.forced() == _ids(tok, ".")[0]
    cons.advance_all(_ids(tok, "."))
    assert not cons.in_perception
    cons2 = _constraint(layout, tok)
    cons2.advance_all(_ids(tok, "see nothing"))
    assert cons2.forced() == holding  # "see nothing" can only go on with "holding"


def test_perception_grammar_takes_part_names_that_hold_a_column_word(pair):
    """FoldCloth's parts: "left sleeve left back": the column word inside the name, then the cell."""
    layout, tok = pair
    text = "see left cup left back , red cup right front , right red cup middle front holding red cup ."
    cons = _constraint(layout, tok)
    for t in _ids(tok, text):
        assert cons.is_allowed(t), tok.decode([t])
        cons.advance(t)
    assert not cons.in_perception
    assert [o["name"] for o in parse_perception(text)["objects"]] == ["left cup", "red cup", "right red cup"]


@pytest.mark.parametrize("budget", [4, 5, 7, 12, 48])
def test_perception_grammar_always_parses_within_the_token_budget(pair, budget):
    """Random logits under the grammar: every perception parses and ends within the budget."""
    import torch

    layout, tok = pair
    gen = torch.Generator().manual_seed(budget)
    marker = _ids(tok, ".")[0]
    for _ in range(60):
        cons = _constraint(layout, tok, max_text_tokens=budget)
        while cons.in_perception:
            forced = cons.forced()
            if forced is None:
                logits = cons.mask_logits(torch.randn(layout.vocab_size, generator=gen) * 3)
                forced = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            cons.advance(forced)
        ids = cons.tokens
        assert ids[-1] == marker and len(ids) - 1 <= budget
        parsed = parse_perception(tok.decode(ids))
        assert all(o["cell"] for o in parsed["objects"])


def test_banned_answers_count_from_the_step_not_the_perception(pair):
    layout, tok = pair
    banned = [answer_opening_ids(layout, tok, STEPS[0])]
    cons = _constraint(layout, tok, banned=banned)
    cons.advance_all(tok.encode("see nothing holding nothing ."))
    cons.advance_all(tok.encode("pick up the red"))
    assert not cons.is_allowed(tok.encode("cup")[0])
    assert cons.is_allowed(tok.encode("fork")[0])


def test_answer_grammar_perceive_needs_the_compact_layout_and_a_tokenizer(pair):
    layout, tok = pair
    with pytest.raises(ValueError, match="text tokenizer"):
        answer_grammar(layout, "perceive")
    assert "step_marker" not in answer_grammar(layout)


def test_reading_order_follows_image_token_rows_and_cells_split_on_token_borders():
    from model_runtime.prompt import perception_in_reading_order

    objects = [{"name": "red cup", "pixel": [90.0, 20.0]}, {"name": "blue bowl", "pixel": [5.0, 30.0]},
               {"name": "teal fork", "pixel": [40.0, 17.0]}, {"name": "white can", "pixel": [50.0, 48.0]}]
    p = perception_in_reading_order(objects, "green spoon", 96, 96)
    # bands of 8 px (12 token rows at 96 px): rows 2, 2, 3, 6; left to right within a band
    assert [o["name"] for o in p["objects"]] == ["teal fork", "red cup", "blue bowl", "white can"]
    assert [o["cell"] for o in p["objects"]] == ["middle back", "right back", "left back", "middle front"]
    assert p["holding"] == "green spoon"
