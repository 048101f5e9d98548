"""Fine-tuning from a trained model whose word vocabulary lacks words of the new data.

The compact layout (``model_runtime.layout.compact``) puts 32 specials first, then one row per
word, then the visual codes; the LM's embedding (and an untied head) has one row per id. New
words (a new robot's verbs and objects: "press", "drawer") therefore need new rows *between* the
words and the codes, so every visual code's id moves up by the number of words added.

``data.new_words: extend`` (an LM stage with ``init_from``) keeps the trained vocabulary in its
order and appends the data's unknown words (most frequent first); ``fit_vocabulary_rows`` then
moves each trained row to its new id (specials and codes unchanged, each known word to its id) and
starts every new word's row at the mean of the trained word rows, so the new words begin as an
average word rather than as noise the head scores at random. ``error`` (the default) refuses data
with unknown words, naming them.

``init_from`` may be an LM checkpoint (``model.safetensors`` + ``text_tokenizer.json``) or a model
directory as ``emu-guide`` loads it (``guidance.json``, ``lm/``, ``text_tokenizer/``): the shipped
default model is one (``init_from=model_runtime/default_model``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from model_runtime.layout import COMPACT_NUM_SPECIALS
from model_runtime.text_tokenizer import TOKENIZER_FILE, WordTokenizer, split_words

__all__ = ["extend_vocabulary", "fit_init_weights", "fit_vocabulary_rows", "init_files", "init_vocabulary"]

VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")  # tensors with one row per token id


def init_files(init_from: str | Path) -> tuple[Path, Path]:
    """(weights file, directory of its text_tokenizer.json) of an LM checkpoint or a model directory."""
    path = Path(init_from)
    if (path / "guidance.json").is_file():  # a TorchBackend model directory (the shipped default model)
        return path / "lm" / "model.safetensors", path / "text_tokenizer"
    return path / "model.safetensors", path


def init_vocabulary(init_from: str | Path) -> WordTokenizer | None:
    """The word vocabulary ``init_from`` was trained with (None without init_from or a word vocabulary)."""
    if not init_from:
        return None
    words_dir = init_files(init_from)[1]
    return WordTokenizer.load(words_dir) if (words_dir / TOKENIZER_FILE).is_file() else None


def extend_vocabulary(trained: WordTokenizer, texts: list[str]) -> WordTokenizer:
    """``trained``'s words in their order, then the words of ``texts`` it lacks (most frequent first)."""
    unknown = [w for t in texts for w in split_words(t) if w not in set(trained.words)]
    if not unknown:
        return trained
    return WordTokenizer(trained.words + WordTokenizer.build([" ".join(unknown)]).words)


def fit_vocabulary_rows(weights: dict[str, torch.Tensor], trained: WordTokenizer, words: WordTokenizer,
                        num_visual_codes: int) -> dict[str, torch.Tensor]:
    """``weights`` trained with vocabulary ``trained`` -> the same model for vocabulary ``words``
    (a superset): specials and codes keep their rows (codes move up with the word count), known
    words move to their ids, new words start at the mean trained word row."""
    missing = [w for w in trained.words if w not in set(words.words)]
    if missing:
        raise ValueError(f"the new vocabulary lacks trained words {missing[:5]}: it must extend the trained one")
    s, w0, w1 = COMPACT_NUM_SPECIALS, trained.vocab_size, words.vocab_size
    old_rows = s + w0 + num_visual_codes
    index = {w: i for i, w in enumerate(trained.words)}
    out = dict(weights)
    for key in VOCAB_ROWS:
        old = weights.get(key)
        if old is None:
            continue  # a tied head has no rows of its own
        if old.shape[0] != old_rows:
            raise ValueError(f"{key} has {old.shape[0]} rows; {w0} words + {num_visual_codes} codes + {s} specials "
                             f"make {old_rows}: init_from's vocabulary does not match its weights")
        new = old.new_empty((s + w1 + num_visual_codes, *old.shape[1:]))
        new[:s] = old[:s]  # specials
        new[s : s + w1] = old[s : s + w0].mean(dim=0)  # new words: the mean trained word row
        for i, word in enumerate(words.words):
            if word in index:
                new[s + i] = old[s + index[word]]
        new[s + w1 :] = old[s + w0 :]  # visual codes
        out[key] = new
    return out


def fit_init_weights(weights: dict[str, torch.Tensor], init_from: str | Path, words: WordTokenizer,
                     num_visual_codes: int) -> dict[str, torch.Tensor]:
    """``init_from``'s weights for this run's vocabulary ``words``: unchanged when it is init_from's
    own, its rows moved (``fit_vocabulary_rows``) when ``words`` extends it (``data.new_words: extend``)."""
    trained = init_vocabulary(init_from)
    if trained is None or trained.words == list(getattr(words, "words", trained.words)):
        return weights
    return fit_vocabulary_rows(weights, trained, words, num_visual_codes)
