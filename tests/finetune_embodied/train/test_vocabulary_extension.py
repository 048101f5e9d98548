"""Fine-tuning from a trained model on data with new words (data.new_words=extend, train/vocabulary.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from finetune_embodied.train.config import ConfigError, DataConfig
from finetune_embodied.train.stages.lm_data import text_tokenizer_for
from finetune_embodied.train.vocabulary import extend_vocabulary, fit_vocabulary_rows, init_files, init_vocabulary
from model_runtime.layout import compact
from model_runtime.lm import LMConfig, build_lm
from model_runtime.text_tokenizer import WordTokenizer

CODES = 16


def test_extend_keeps_the_trained_ids_and_appends_new_words():
    trained = WordTokenizer(["pick", "up", "the", "cup"])
    ext = extend_vocabulary(trained, ["press the button", "press the red button", "pick up the cup"])
    assert ext.words[:4] == trained.words
    assert ext.words[4:] == ["button", "press", "red"]  # most frequent first, then alphabetical
    assert extend_vocabulary(trained, ["pick up the cup"]) is trained


@pytest.mark.parametrize("tied", [True, False])
def test_moved_rows_give_the_same_logits_for_everything_the_model_knew(tied):
    """Old ids -> new ids: the extended model's logits over the specials, old words and codes equal
    the trained model's (same hidden states, same head rows); new words start at the mean word row."""
    trained, words = WordTokenizer(["pick", "up", "the", "cup"]), WordTokenizer(["pick", "up", "the", "cup", "press", "drawer"])
    small = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
                 tie_word_embeddings=tied)
    old_layout, new_layout = compact(trained.vocab_size, CODES), compact(words.vocab_size, CODES)
    old = build_lm(LMConfig(vocab_size=old_layout.vocab_size, **small), seed=0)
    new = build_lm(LMConfig(vocab_size=new_layout.vocab_size, **small), seed=1)
    moved = fit_vocabulary_rows(old.state_dict(), trained, words, CODES)
    missing, unexpected = new.load_state_dict(moved, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)

    codes = [3, 0, 15]
    old_ids = torch.tensor([[old_layout.bos, *trained.encode("pick up the cup"), *(old_layout.visual_offset + c for c in codes)]])
    new_ids = torch.tensor([[new_layout.bos, *words.encode("pick up the cup"), *(new_layout.visual_offset + c for c in codes)]])
    with torch.no_grad():
        lo, ln = old(input_ids=old_ids).logits[0], new(input_ids=new_ids).logits[0]
    w0, w1 = old_layout.visual_offset, new_layout.visual_offset
    torch.testing.assert_close(ln[:, :w0], lo[:, :w0])  # specials and the trained words
    torch.testing.assert_close(ln[:, w1:], lo[:, w0:])  # visual codes, moved up by two
    emb = new.get_input_embeddings().weight
    torch.testing.assert_close(emb[w0], old.get_input_embeddings().weight[32:w0].mean(0))  # "press" starts average


def test_rows_must_match_the_trained_vocabulary():
    trained = WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="lacks trained words"):
        fit_vocabulary_rows({}, trained, WordTokenizer(["a"]), CODES)
    with pytest.raises(ValueError, match="does not match its weights"):
        fit_vocabulary_rows({"model.embed_tokens.weight": torch.zeros(10, 4)}, trained, WordTokenizer(["a", "b", "c"]), CODES)


def test_the_shipped_model_directory_is_an_init_and_its_vocabulary_extends(tmp_path):
    from emu_guide.paths import shipped_model_dir

    shipped = shipped_model_dir()
    if not (shipped / "guidance.json").is_file():
        pytest.skip("no shipped model directory")
    weights, words_dir = init_files(shipped)
    assert weights.is_file() and words_dir.name == "text_tokenizer"
    vocab = init_vocabulary(shipped)
    assert vocab is not None and "press" not in vocab.words
    texts = ["press the button down", "press the button"]
    cfg = SimpleNamespace(init_from=str(shipped), data=DataConfig(path="x", new_words="extend"))
    ext = text_tokenizer_for(cfg, lambda: texts)
    assert ext.words[: vocab.vocab_size] == vocab.words and not ext.unknown_words(" ".join(texts))
    cfg.data = DataConfig(path="x")  # new_words: error (the default) keeps the trained vocabulary
    assert text_tokenizer_for(cfg, lambda: texts).words == vocab.words
    with pytest.raises(ConfigError, match="new_words"):
        DataConfig(path="x", new_words="grow")
