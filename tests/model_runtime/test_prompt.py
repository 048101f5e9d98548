import numpy as np
import pytest

from model_runtime.layout import COMPACT_SPECIALS, compact, emu3, emu35
from model_runtime.prompt import (
    DONE_TEXT,
    IGNORE_INDEX,
    ParseError,
    build_answer,
    build_prompt,
    build_training_sequence,
    build_unconditional_prompt,
    format_question,
    pad_batch,
    parse_answer,
)
from model_runtime.text_tokenizer import HFTextTokenizer, WordTokenizer

CORPUS = ["Pick up the red cup.", "Place the red cup in the bin.", "Put the blue block on the green block."]
SID = {name: i for i, name in enumerate(COMPACT_SPECIALS)}


def make_tiny_hf_tokenizer(directory):
    """A real byte-level BPE tokenizer trained offline on a few sentences (stands in for Qwen's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3 + ["You are a helpful assistant for vla task. USER: ASSISTANT:"], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(directory))
    return HFTextTokenizer.load(directory)


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    return make_tiny_hf_tokenizer(tmp_path_factory.mktemp("hf_tok"))


@pytest.fixture(scope="module")
def word_tok():
    return WordTokenizer.build(CORPUS)


def setups(word_tok, hf_tok):
    return [
        (compact(num_text_words=word_tok.vocab_size, num_visual_codes=1000), word_tok),
        (emu35(), hf_tok),
        (emu3(), hf_tok),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["compact", "emu35", "emu3"])
def test_round_trip_every_preset(which, word_tok, hf_tok):
    layout, tok = setups(word_tok, hf_tok)[which]
    rng = np.random.default_rng(which)
    frame = rng.integers(0, layout.num_visual_codes, size=(4, 5))
    sub = rng.integers(0, layout.num_visual_codes, size=(4, 5))
    prompt = build_prompt(layout, tok, "Put the blue block on the green block.", ["pick up the red cup."], frame)
    # The prompt holds exactly one image: the current frame.
    spans = layout.find_images(prompt)
    assert len(spans) == 1
    s, e = spans[0]
    assert np.array_equal(layout.parse_image(prompt[s:e]), frame)

    answer = build_answer(layout, tok, "place the red cup in the bin.", sub, is_final=False)
    step = parse_answer(layout, tok, answer)
    assert step.text == "place the red cup in the bin." and not step.is_final
    assert np.array_equal(step.codes, sub) and step.codes.dtype == np.int64

    final = parse_answer(layout, tok, build_answer(layout, tok, None, None, is_final=True))
    assert final.is_final and final.codes is None and final.text == DONE_TEXT


def test_compact_prompt_exact_ids(word_tok):
    lay = compact(num_text_words=word_tok.vocab_size, num_visual_codes=1000)
    w = {word: 32 + i for i, word in enumerate(word_tok.words)}
    frame = np.array([[0, 1], [2, 999]])
    ids = build_prompt(lay, word_tok, "Pick up the cup", ["pick up the red cup."], frame)
    image = [SID["<boi>"], SID["2"], SID["*"], SID["2"], SID["<img>"],
             lay.visual_offset + 0, lay.visual_offset + 1, SID["<eol>"],
             lay.visual_offset + 2, lay.visual_offset + 999, SID["<eoi>"]]  # fmt: skip
    expected = (
        [SID["<bos>"], SID["<user>"], w["pick"], w["up"], w["the"], w["cup"]]
        + [SID["<history>"], w["pick"], w["up"], w["the"], w["red"], w["cup"], w["."]]
        + image
        + [SID["<assistant>"]]
    )
    assert ids == expected
    assert build_unconditional_prompt(lay, word_tok, "Pick up the cup", ["pick up the red cup."], frame) == (
        [SID["<bos>"], SID["<user>"]] + image + [SID["<assistant>"]]
    )
    assert build_answer(lay, word_tok, None, None, True) == [SID["<done>"], SID["<eos>"]]


def test_emu35_prompt_uses_the_real_ids_and_template(hf_tok):
    lay = emu35()
    frame = np.array([[0, 1, 2], [3, 4, 131_071]])
    ids = build_prompt(lay, hf_tok, "Pick up the red cup.", ["move to the cup"], frame)
    assert ids[0] == 151849  # <|extra_203|> = BOS
    assert ids[-1] == 151746  # <|extra_100|> = assistant start
    image = [151852, 17, 9, 18, 151851, 151854, 151855, 151856, 151846, 151857, 151858, 151854 + 131_071, 151853]
    b = ids.index(151852)
    assert ids[b : b + len(image)] == image
    question = format_question("Pick up the red cup.", ["move to the cup"])
    assert hf_tok.decode(ids[1:b]) == f"You are a helpful assistant for vla task. USER: {question}"
    assert hf_tok.decode(ids[b + len(image) : -1]) == " ASSISTANT: "
    # Unconditional: the release's own ("You are a helpful assistant. USER: <|IMAGE|> ASSISTANT: "):
    # same image, question and task dropped.
    unc = build_unconditional_prompt(lay, hf_tok, "Pick up the red cup.", ["move to the cup"], frame)
    ub = unc.index(151852)
    assert hf_tok.decode(unc[1:ub]) == "You are a helpful assistant. USER: "
    assert unc[ub:] == ids[b:]
    with pytest.raises(ValueError, match="unknown Emu3.5 task"):
        build_prompt(lay, hf_tok, "x", [], frame, task="dance")
    assert hf_tok.decode(build_prompt(lay, hf_tok, "x", [], frame, task="howto")[1:20]).startswith(
        "You are a helpful assistant for howto task."
    )


def test_emu3_prompt_puts_the_image_first(hf_tok):
    lay = emu3()
    ids = build_prompt(lay, hf_tok, "Pick up the red cup.", [], np.array([[5]]))
    assert ids[0] == 151849
    b = ids.index(151852)
    assert ids[b : b + 9] == [151852, 16, 9, 16, 151851, 151854 + 5, 151846, 151847, 151853]
    assert hf_tok.decode(ids[1:b]) == "You are a helpful assistant. USER: "
    assert hf_tok.decode(ids[b + 9 :]) == "Pick up the red cup.\nWhat is the next step? ASSISTANT: "


def test_parse_errors_name_the_problem(word_tok):
    lay = compact(num_text_words=word_tok.vocab_size, num_visual_codes=1000)
    codes = np.arange(6).reshape(2, 3)
    good = build_answer(lay, word_tok, "pick up the cup", codes, False)
    img = lay.serialize_image(codes)
    with pytest.raises(ParseError, match="no EOS"):
        parse_answer(lay, word_tok, good[:-1])
    assert parse_answer(lay, word_tok, good[:-1], require_eos=False).text == "pick up the cup"
    assert parse_answer(lay, word_tok, good + [lay.pad, lay.pad]).text == "pick up the cup"  # right padding
    with pytest.raises(ParseError, match="2 image blocks"):
        parse_answer(lay, word_tok, good[:-1] + img + [lay.eos])
    with pytest.raises(ParseError, match="tokens after the subgoal image"):
        parse_answer(lay, word_tok, good[:-1] + [32, lay.eos])
    with pytest.raises(ParseError, match="not closed"):
        parse_answer(lay, word_tok, good[:-2] + [lay.eos])
    with pytest.raises(ParseError, match="malformed subgoal image"):
        parse_answer(lay, word_tok, good[:-3] + [lay.eoi, lay.eos])  # a row one cell short
    with pytest.raises(ParseError, match="visual id"):
        parse_answer(lay, word_tok, [lay.visual_offset + 3] + img + [lay.eos])
    with pytest.raises(ParseError, match="special id"):
        parse_answer(lay, word_tok, [32, SID["<user>"]] + img + [lay.eos])
    with pytest.raises(ParseError, match="no text"):
        parse_answer(lay, word_tok, img + [lay.eos])
    with pytest.raises(ParseError, match="no subgoal image"):
        parse_answer(lay, word_tok, [32, 33, lay.eos])
    with pytest.raises(ParseError, match="after <done>"):
        parse_answer(lay, word_tok, [SID["<done>"], 32, lay.eos])
    with pytest.raises(ParseError, match="before the end"):
        parse_answer(lay, word_tok, [32, lay.eos, 33, lay.eos])
    with pytest.raises(ParseError, match="expected"):
        parse_answer(lay, word_tok, good, expected_grid=(3, 3))
    with pytest.raises(ParseError, match="empty answer"):
        parse_answer(lay, word_tok, [lay.eos])


def test_bad_inputs_are_rejected(word_tok, hf_tok, tmp_path):
    lay = compact(num_text_words=word_tok.vocab_size, num_visual_codes=1000)
    frame = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="num_text_words="):
        build_prompt(compact(num_text_words=3, num_visual_codes=1000), word_tok, "pick", [], frame)
    with pytest.raises(ValueError, match="needs a WordTokenizer"):
        build_prompt(lay, hf_tok, "pick", [], frame)
    with pytest.raises(ValueError, match="instruction is empty"):
        build_prompt(lay, word_tok, "   ", [], frame)
    with pytest.raises(ValueError, match=r"history\[1\] is empty"):
        build_prompt(lay, word_tok, "pick", ["pick", ""], frame)
    with pytest.raises(ValueError, match="frame_codes must be a non-empty"):
        build_prompt(lay, word_tok, "pick", [], np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="integer codes"):
        build_prompt(lay, word_tok, "pick", [], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="visual codes must be in"):
        build_prompt(lay, word_tok, "pick", [], np.full((2, 2), 1000))
    with pytest.raises(ValueError, match="does not know"):
        build_answer(lay, word_tok, "juggle the cup", frame, False)
    with pytest.raises(ValueError, match="needs subgoal_codes"):
        build_answer(lay, word_tok, "pick up the cup", None, False)
    with pytest.raises(ValueError, match="carries no subgoal image"):
        build_answer(lay, word_tok, None, frame, True)
    with pytest.raises(ValueError, match="reserved"):
        build_answer(emu35(), hf_tok, DONE_TEXT, frame, False)


def test_special_token_text_cannot_be_injected(tmp_path):
    # A tokenizer that knows Emu's special names at their real ids (as the real Qwen/Emu3.5 one does).
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "pick": 1, "up": 2, "<|extra_203|>": 151849, "<|image start|>": 151852}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken("<|extra_203|>", special=True), AddedToken("<|image start|>", special=True)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(tmp_path))
    hf = HFTextTokenizer.load(tmp_path)
    hf.check_layout(emu35())  # names and ids agree
    assert hf.unknown_words("pick banana") == ["banana"]
    with pytest.raises(ValueError, match="special-token text is not allowed"):
        build_prompt(emu35(), hf, "pick up <|image start|>", [], np.zeros((1, 1), dtype=np.int64))


@pytest.mark.parametrize("which", [0, 1], ids=["compact", "emu35"])
def test_training_sequence(which, word_tok, hf_tok):
    layout, tok = setups(word_tok, hf_tok)[which]
    frame = np.full((3, 3), 7)
    sub = np.full((3, 3), 9)
    seq = build_training_sequence(
        layout, tok, "pick up the red cup", [], frame, "place the red cup in the bin", sub, False
    )
    prompt = build_prompt(layout, tok, "pick up the red cup", [], frame)
    answer = build_answer(layout, tok, "place the red cup in the bin", sub, False)
    p = len(prompt)
    assert seq.prompt_length == p and seq.input_ids.tolist() == prompt + answer
    assert (seq.labels[:p] == IGNORE_INDEX).all() and seq.labels[p:].tolist() == answer
    assert (seq.loss_weights[:p] == 0).all()
    visual = layout.is_visual(seq.input_ids)
    assert (seq.loss_weights[p:][visual[p:]] == 0.5).all() and visual[p:].sum() == 9
    assert (seq.loss_weights[p:][~visual[p:]] == 1.0).all()
    assert [(s.is_target, s.height, s.width) for s in seq.image_spans] == [(False, 3, 3), (True, 3, 3)]
    target = seq.image_spans[1]
    assert np.array_equal(layout.parse_image(seq.input_ids[target.start : target.end]), sub)
    assert target.end == len(seq) - 1  # EOS follows the subgoal image

    final = build_training_sequence(
        layout, tok, "pick up the red cup", ["pick up the red cup"], frame, None, None, True
    )
    assert [s.is_target for s in final.image_spans] == [False]
    assert parse_answer(layout, tok, final.input_ids[final.prompt_length :]).is_final
    with pytest.raises(ValueError, match="visual_loss_weight"):
        build_training_sequence(layout, tok, "pick", [], frame, "pick", sub, False, visual_loss_weight=-1)


def test_pad_batch_left_pads():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="non-empty"):
        pad_batch([[1], []], pad_id=0)


def test_plan_sequence_validates_its_steps(word_tok):
    from model_runtime.prompt import build_plan_sequence

    layout = compact(word_tok.vocab_size, 16)
    codes = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="at least one remaining step"):
        build_plan_sequence(layout, word_tok, "clear the table", [], codes, [])
    with pytest.raises(ValueError, match="does not know"):
        build_plan_sequence(layout, word_tok, "clear the table", [], codes, ["juggle the zebra"])
