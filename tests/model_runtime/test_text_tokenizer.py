import json

import pytest

from model_runtime.layout import COMPACT_NUM_SPECIALS, COMPACT_SPECIALS, compact, emu35
from model_runtime.text_tokenizer import (
    HFTextTokenizer,
    TextTokenizer,
    TextTokenizerError,
    WordTokenizer,
    load_text_tokenizer,
    split_words,
)

CORPUS = ["Pick up the red cup.", "Place the red cup in the bin.", "Fold the left sleeve, then the right sleeve."]


def make_tiny_hf_tokenizer(directory, extra_specials=()):
    """A real byte-level BPE tokenizer trained offline on a few sentences (stands in for Qwen's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(extra_specials),
    )
    tok.train_from_iterator(CORPUS * 3 + ["You are a helpful assistant for vla task. USER: ASSISTANT:"], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(directory))
    return directory


def test_split_words_lowercases_and_splits_punctuation():
    assert split_words("Pick up the Red cup, then STOP.") == [
        "pick",
        "up",
        "the",
        "red",
        "cup",
        ",",
        "then",
        "stop",
        ".",
    ]
    assert split_words("robot's arm") == ["robot's", "arm"]


def test_word_tokenizer_ids_match_the_compact_layout():
    tok = WordTokenizer.build(CORPUS)
    assert isinstance(tok, TextTokenizer)
    # "the" is the most frequent word (5 times) so it gets the first word id.
    assert tok.words[0] == "the"
    assert tok.encode("the") == [COMPACT_NUM_SPECIALS]
    lay = compact(num_text_words=tok.vocab_size, num_visual_codes=1000)
    ids = tok.encode("Pick up the red cup.")
    assert all(COMPACT_NUM_SPECIALS <= i < lay.visual_offset for i in ids)
    assert tok.decode(ids) == "pick up the red cup."
    assert tok.decode(tok.encode("Fold the left sleeve, then the right sleeve.")) == (
        "fold the left sleeve, then the right sleeve."
    )


def test_word_tokenizer_unknown_words():
    tok = WordTokenizer.build(CORPUS)
    unk = COMPACT_SPECIALS.index("<unk>")
    ids = tok.encode("Pick up the blue banana")
    assert ids.count(unk) == 2
    assert tok.unknown_words("Pick up the blue banana, blue!") == ["blue", "banana", "!"]
    assert tok.unknown_words("pick up the cup") == []
    assert tok.decode([unk]) == "<unk>"
    with pytest.raises(TextTokenizerError, match="not a word id"):
        tok.decode([3])
    with pytest.raises(TextTokenizerError, match="not a word id"):
        tok.decode([COMPACT_NUM_SPECIALS + tok.vocab_size])


def test_word_tokenizer_min_count_and_errors():
    tok = WordTokenizer.build(CORPUS, min_count=2)
    assert "fold" not in tok.words and "red" in tok.words
    with pytest.raises(TextTokenizerError, match="min_count"):
        WordTokenizer.build(CORPUS, min_count=0)
    with pytest.raises(TextTokenizerError, match="no words"):
        WordTokenizer.build(["  ", ""])
    with pytest.raises(TextTokenizerError, match="duplicate"):
        WordTokenizer(["a", "b", "a"])
    with pytest.raises(TextTokenizerError, match="single lower-case word"):
        WordTokenizer(["Red cup"])


def test_word_tokenizer_save_load(tmp_path):
    tok = WordTokenizer.build(CORPUS)
    tok.save(tmp_path / "tok")
    back = WordTokenizer.load(tmp_path / "tok")
    assert back.words == tok.words
    assert load_text_tokenizer(tmp_path / "tok").words == tok.words
    doc = json.loads((tmp_path / "tok" / "text_tokenizer.json").read_text())
    doc["first_id"] = 10
    (tmp_path / "tok" / "text_tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(TextTokenizerError, match="start at id 10"):
        WordTokenizer.load(tmp_path / "tok")
    (tmp_path / "tok" / "text_tokenizer.json").write_text("{not json")
    with pytest.raises(TextTokenizerError, match="not valid JSON"):
        WordTokenizer.load(tmp_path / "tok")
    with pytest.raises(TextTokenizerError, match="no text_tokenizer.json"):
        WordTokenizer.load(tmp_path / "missing")
    with pytest.raises(TextTokenizerError, match="holds no text tokenizer"):
        load_text_tokenizer(tmp_path)


def test_hf_tokenizer_loads_offline_and_round_trips(tmp_path):
    make_tiny_hf_tokenizer(tmp_path / "hf")
    tok = HFTextTokenizer.load(tmp_path / "hf")
    assert isinstance(tok, TextTokenizer)
    text = "Pick up the red cup.\nWhat is next?"
    ids = tok.encode(text)
    assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.unknown_words("any string at all") == []  # byte-level BPE covers everything
    tok.save(tmp_path / "copy")
    again = load_text_tokenizer(tmp_path / "copy")
    assert isinstance(again, HFTextTokenizer) and again.encode(text) == ids
    with pytest.raises(TextTokenizerError, match="does not exist"):
        HFTextTokenizer.load(tmp_path / "nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{}")
    with pytest.raises(TextTokenizerError, match="cannot load"):
        HFTextTokenizer.load(tmp_path / "broken")


def test_hf_tokenizer_layout_check_names_the_mismatch(tmp_path):
    # A tokenizer that has Emu's BOS name at a small id disagrees with the real Emu3.5 layout.
    make_tiny_hf_tokenizer(tmp_path / "hf", extra_specials=["<|extra_203|>"])
    tok = HFTextTokenizer.load(tmp_path / "hf")
    with pytest.raises(TextTokenizerError, match=r"<\|extra_203\|> is 0 here but bos=151849"):
        tok.check_layout(emu35())
    # Without any of the names, nothing to compare: passes.
    make_tiny_hf_tokenizer(tmp_path / "plain")
    HFTextTokenizer.load(tmp_path / "plain").check_layout(emu35())


def test_tokenizer_shipped_as_code_needs_trust_remote_code(tmp_path):
    """Emu's tokenizer directories carry their tokenizer class as code (auto_map): refused unless trusted."""
    make_tiny_hf_tokenizer(tmp_path / "rc")
    (tmp_path / "rc" / "tokenization_tiny.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\nclass TinyTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    cfg_path = tmp_path / "rc" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_tiny.TinyTokenizer"]}
    cfg["tokenizer_class"] = "TinyTokenizer"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(TextTokenizerError, match="needs trust_remote_code=True"):
        HFTextTokenizer.load(tmp_path / "rc")
    tok = HFTextTokenizer.load(tmp_path / "rc", trust_remote_code=True)
    assert type(tok.tokenizer).__name__ == "TinyTokenizer"
    assert tok.decode(tok.encode("Pick up the red cup.")) == "Pick up the red cup."
