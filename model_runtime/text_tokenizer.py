"""Text tokenizers behind one small interface.

- ``WordTokenizer``: the default tiny model's word-level vocabulary (compact layout). Text ids are
  ``COMPACT_NUM_SPECIALS + word_index``, so ``compact(num_text_words=tok.vocab_size, ...)`` is
  the matching layout. Unknown words map to the ``<unk>`` special; ``unknown_words`` lists them so
  the session can reject an instruction the model cannot read instead of guessing.
- ``HFTextTokenizer``: a local transformers tokenizer directory (Qwen-based, as shipped with
  Emu3.5 and Emu3). Always ``local_files_only``: nothing is downloaded.

Specials (BOS, BOI, assistant markers, ...) are never produced by these tokenizers: the prompt
builder (``model_runtime/prompt.py``) inserts them from the ``TokenLayout``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from emu_guide.paths import read_json_object
from model_runtime.layout import COMPACT_NUM_SPECIALS, COMPACT_SPECIALS

__all__ = [
    "HFTextTokenizer",
    "TextTokenizer",
    "TextTokenizerError",
    "WordTokenizer",
    "load_text_tokenizer",
    "split_words",
]

TOKENIZER_FILE = "text_tokenizer.json"  # our own file (WordTokenizer; HF marker for the others)
EMU_SPECIAL_TOKENS_FILE = "emu3_vision_tokens.txt"  # the Emu3.5 release's image/visual special tokens
_UNK_ID = COMPACT_SPECIALS.index("<unk>")
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_NO_SPACE_BEFORE = set(".,;:!?)'")
_NO_SPACE_AFTER = set("(")


class TextTokenizerError(ValueError):
    """A text tokenizer cannot be built, loaded or used as asked; the message names the problem."""


@runtime_checkable
class TextTokenizer(Protocol):
    """What the prompt builder and the parser need from a text tokenizer."""

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids (never specials, never visual ids)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Ids produced by ``encode`` (or generated text ids) -> text."""
        ...

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` the tokenizer cannot represent (always empty for byte-level BPE)."""
        ...

    def save(self, directory: str | Path) -> Path: ...

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer: ...


def split_words(text: str) -> list[str]:
    """Lower-case and split into words and single punctuation marks ("Pick up the cup." -> 5 words)."""
    if not isinstance(text, str):
        raise TextTokenizerError(f"expected text as str, got {type(text).__name__}")
    return _WORD_RE.findall(text.lower())


class WordTokenizer:
    """Word-level vocabulary for the compact layout; ids start at ``COMPACT_NUM_SPECIALS``."""

    kind = "word"

    def __init__(self, words: Iterable[str]) -> None:
        self.words: list[str] = list(words)
        self._index = {w: i for i, w in enumerate(self.words)}
        if len(self._index) != len(self.words):
            dup = [w for w, n in Counter(self.words).items() if n > 1]
            raise TextTokenizerError(f"WordTokenizer: duplicate words in vocabulary: {dup[:5]}")
        for w in self.words:
            if split_words(w) != [w]:
                raise TextTokenizerError(f"WordTokenizer: {w!r} is not a single lower-case word or mark")

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> WordTokenizer:
        """Vocabulary of every word seen at least ``min_count`` times, most frequent first."""
        if min_count < 1:
            raise TextTokenizerError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(split_words(text))
        if not counts:
            raise TextTokenizerError("WordTokenizer.build: the corpus has no words")
        # Frequency then alphabetical: deterministic for the same corpus.
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if not words:
            raise TextTokenizerError(f"WordTokenizer.build: no word occurs {min_count} times or more")
        return cls(words)

    @property
    def vocab_size(self) -> int:
        """Number of words (the compact layout's ``num_text_words``)."""
        return len(self.words)

    @property
    def first_id(self) -> int:
        return COMPACT_NUM_SPECIALS

    def encode(self, text: str) -> list[int]:
        return [COMPACT_NUM_SPECIALS + self._index[w] if w in self._index else _UNK_ID for w in split_words(text)]

    def unknown_words(self, text: str) -> list[str]:
        seen: list[str] = []
        for w in split_words(text):
            if w not in self._index and w not in seen:
                seen.append(w)
        return seen

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == _UNK_ID:
                out.append("<unk>")
            elif COMPACT_NUM_SPECIALS <= i < COMPACT_NUM_SPECIALS + len(self.words):
                out.append(self.words[i - COMPACT_NUM_SPECIALS])
            else:
                raise TextTokenizerError(
                    f"id {i} is not a word id (words are {COMPACT_NUM_SPECIALS}.."
                    f"{COMPACT_NUM_SPECIALS + len(self.words) - 1}, <unk> is {_UNK_ID})"
                )
        return _join_words(out)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        doc = {"kind": self.kind, "first_id": COMPACT_NUM_SPECIALS, "words": self.words}
        (path / TOKENIZER_FILE).write_text(json.dumps(doc, indent=1) + "\n")
        return path / TOKENIZER_FILE

    @classmethod
    def load(cls, directory: str | Path) -> WordTokenizer:
        doc = _read_tokenizer_json(directory)
        if doc.get("kind") != cls.kind:
            raise TextTokenizerError(f"{directory}: {TOKENIZER_FILE} is a {doc.get('kind')!r} tokenizer, not 'word'")
        if doc.get("first_id") != COMPACT_NUM_SPECIALS:
            raise TextTokenizerError(
                f"{directory}: words start at id {doc.get('first_id')}, this layout puts them at {COMPACT_NUM_SPECIALS}"
            )
        words = doc.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise TextTokenizerError(f"{directory}: {TOKENIZER_FILE} has no list of words")
        return cls(words)

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self.words)} words)"


def _join_words(words: list[str]) -> str:
    text = ""
    for w in words:
        if text and w[0] not in _NO_SPACE_BEFORE and text[-1] not in _NO_SPACE_AFTER:
            text += " "
        text += w
    return text


class HFTextTokenizer:
    """A local transformers tokenizer directory (e.g. Emu3.5's or Emu3's Qwen tokenizer).

    Specials are inserted by the prompt builder from the layout, so only plain text goes through
    here; byte-level BPE never splits across a special token, so tokenising the template's text
    pieces separately gives the same ids as tokenising the whole template string.
    """

    kind = "hf"

    # Emu3 / Emu3.5 names of the layout's specials (checked by ``check_layout`` when present). In
    # their tokenizer, specials start at 151643 (<|endoftext|>), <|extra_k|> is 151646 + k, and the
    # image tokens follow <|extra_204|>.
    EMU_SPECIAL_NAMES = {
        "bos": "<|extra_203|>",
        "eos": "<|extra_204|>",
        "eol": "<|extra_200|>",
        "eof": "<|extra_201|>",
        "img": "<|image token|>",
        "boi": "<|image start|>",
        "eoi": "<|image end|>",
        "pad": "<|endoftext|>",
    }

    def __init__(self, tokenizer: Any, source: str = "") -> None:
        self.tokenizer = tokenizer
        self.source = source

    @classmethod
    def load(cls, directory: str | Path, trust_remote_code: bool = False) -> HFTextTokenizer:
        """Load a local tokenizer directory.

        Emu3.5's and Emu3's own tokenizer directories ship their tokenizer class as code
        (``tokenization_emu3.py``, tiktoken-based, named by ``auto_map`` in tokenizer_config.json):
        that code runs in this process, so it is loaded only with ``trust_remote_code=True`` (read
        from the directory, never downloaded); without it a TextTokenizerError says which file and
        class would run and how to opt in. A special-tokens file next to it
        (``emu3_vision_tokens.txt``: image and visual tokens) is handed to the class as the release's
        own loader does. Needs the ``tiktoken`` package for the release's tokenizer.
        """
        path = Path(directory)
        if not path.is_dir():
            raise TextTokenizerError(f"tokenizer directory {path} does not exist")
        from transformers import AutoTokenizer

        custom = custom_tokenizer_code(path)
        kwargs: dict[str, Any] = {}
        if custom is not None:
            if not trust_remote_code:
                raise TextTokenizerError(
                    f"the tokenizer in {path} is custom code ({custom}, named by auto_map in tokenizer_config.json)"
                    " that would run in this process: read it, then opt in with trust_remote_code=True"
                    " (load_backend(..., trust_remote_code=True), CLI --trust-remote-code, ROS parameter"
                    " trust_remote_code) if you trust it; it needs trust_remote_code=True"
                )
            special = path / EMU_SPECIAL_TOKENS_FILE
            if special.is_file():
                kwargs["special_tokens_file"] = str(special)
        try:
            tok = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=trust_remote_code, **kwargs
            )
        except ImportError as exc:  # the custom code's own imports (tiktoken for the Emu3.5 release)
            raise TextTokenizerError(f"the tokenizer code in {path} needs a package that is missing: {exc}") from None
        except Exception as exc:  # transformers raises OSError/ValueError/KeyError for bad dirs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "" if trust_remote_code else " (a tokenizer shipped as code needs trust_remote_code=True)"
            raise TextTokenizerError(f"cannot load a transformers tokenizer from {path}: {first}{hint}") from None
        return cls(tok, source=str(path))

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TextTokenizerError(f"expected text as str, got {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(
            [int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def unknown_words(self, text: str) -> list[str]:
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None:
            return []  # byte-level BPE represents every string
        words = text.split()
        return [w for w in words if unk in self.encode(w)]

    def token_id(self, token: str) -> int | None:
        """Id of a token string in this tokenizer's vocabulary, or None."""
        tid = self.tokenizer.convert_tokens_to_ids(token)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        return (
            None if tid is None or (unk is not None and tid == unk and token != self.tokenizer.unk_token) else int(tid)
        )

    def check_layout(self, layout: Any) -> None:
        """Raise TextTokenizerError when the tokenizer's named specials disagree with ``layout``.

        Only names the tokenizer actually has are compared; a real Emu3.5/Emu3 tokenizer has all.
        """
        wrong = []
        for field_name, token in self.EMU_SPECIAL_NAMES.items():
            tid = self.token_id(token)
            if tid is not None and tid != getattr(layout, field_name):
                wrong.append(f"{token} is {tid} here but {field_name}={getattr(layout, field_name)} in {layout.name!r}")
        if wrong:
            raise TextTokenizerError(
                f"tokenizer {self.source or '(in memory)'} does not match the layout: " + "; ".join(wrong)
            )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / TOKENIZER_FILE).write_text(json.dumps({"kind": self.kind}) + "\n")
        return path

    def __repr__(self) -> str:
        return f"HFTextTokenizer({self.source or type(self.tokenizer).__name__}, {self.vocab_size} ids)"


def custom_tokenizer_code(directory: str | Path) -> str | None:
    """``"file.py: Class"`` when the directory's tokenizer is Python code (``auto_map``), else None."""
    cfg = Path(directory) / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        doc = json.loads(cfg.read_text())
    except (json.JSONDecodeError, OSError):
        return None  # transformers reports the broken file itself
    ref = (doc.get("auto_map") or {}).get("AutoTokenizer") if isinstance(doc, dict) else None
    if isinstance(ref, (list, tuple)):
        ref = next((r for r in ref if r), None)
    if not isinstance(ref, str) or "." not in ref:
        return None
    module, cls_name = ref.rsplit(".", 1)
    return f"{module.split('--')[-1]}.py: {cls_name}"


def _read_tokenizer_json(directory: str | Path) -> dict:
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise TextTokenizerError(f"no {TOKENIZER_FILE} in {directory}")
    return read_json_object(path, TextTokenizerError)


def load_text_tokenizer(directory: str | Path, trust_remote_code: bool = False) -> WordTokenizer | HFTextTokenizer:
    """Load whichever tokenizer a directory holds: our word vocabulary or a transformers tokenizer
    (``trust_remote_code``: see ``HFTextTokenizer.load``)."""
    path = Path(directory)
    if (path / TOKENIZER_FILE).is_file():
        kind = _read_tokenizer_json(path).get("kind")
        if kind == WordTokenizer.kind:
            return WordTokenizer.load(path)
        if kind != HFTextTokenizer.kind:
            raise TextTokenizerError(f"{path / TOKENIZER_FILE}: unknown tokenizer kind {kind!r}")
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return HFTextTokenizer.load(path, trust_remote_code=trust_remote_code)
    raise TextTokenizerError(f"{path} holds no text tokenizer ({TOKENIZER_FILE} or a transformers tokenizer)")
