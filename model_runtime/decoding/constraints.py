"""The constraint state machine every decoder shares (text AR, image AR, DiDA).

Two phases. In TEXT, visual ids and the structural image tokens are forbidden; BOI opens an image
(at most ``max_images`` per answer) and EOS ends the answer. In IMAGE the block is fully
determined by ``TokenLayout.image_block(h, w)`` for the caller's grid (the vision tokenizer's):
the size header, IMG, EOL (and Emu3's EOF) and EOI are forced; every cell accepts visual ids only.
So a decoder can never emit a block ``TokenLayout.parse_image`` rejects.

Answer format "perceive" (``step_marker``): the answer opens with a perception text run that
must end with the marker token before anything else (no BOI, EOS or final marker in it); the step
then starts after the marker, and every rule about the answer's opening (the final marker, banned
rejected answers, grounded-decoding mentions, text before the image) applies from there.
With a ``PerceptionGrammar`` the perception itself follows ``see <objects> holding <object> .``
word by word, so a perception always parses (``model_runtime.prompt.parse_perception``).

Forced tokens need no forward pass (nothing is sampled); decoders queue them and run them through
the model together with the next token that does need logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

import torch

from model_runtime.layout import TokenLayout

__all__ = ["ConstraintError", "DecodeConstraint", "PerceptionGrammar", "Phase"]


class ConstraintError(ValueError):
    """A token violates the answer grammar (a decoder bug, never a model output: decoders mask first)."""


class Phase(str, Enum):
    TEXT = "text"
    IMAGE = "image"
    DONE = "done"


class PerceptionGrammar:
    """Word-level grammar of a perception: ``see`` then ``nothing`` or ``NAME COLUMN ROW`` items
    joined by ``,``, then ``holding`` and ``nothing`` or a NAME, then the marker.

    A NAME is one or more words that are not perception keywords or rows; a column word may be one
    of them ("left sleeve left back") but not the last: after a name word, a column word is read as
    the column when a row follows and as a name word otherwise. The grammar
    bounds its own length: names have at most ``max_name_words`` words, the list at most
    ``max_objects`` items, and with a token budget an item or a name word is only offered while
    the rest still fits (the shortest ending, "holding nothing", needs 2 tokens). States are
    ``(where, objects listed, words in the current name)``; the grammar holds ids only.
    """

    def __init__(self, *, see: int, holding: int, nothing: int, comma: int, marker: int,
                 columns: Iterable[int], rows: Iterable[int], max_objects: int = 12, max_name_words: int = 4) -> None:
        self.see, self.holding, self.nothing, self.comma, self.marker = see, holding, nothing, comma, marker
        self.columns, self.rows = frozenset(int(c) for c in columns), frozenset(int(r) for r in rows)
        self.max_objects, self.max_name_words = max_objects, max_name_words
        self.non_names = frozenset({see, holding, nothing, comma, marker, *self.columns, *self.rows})

    START = ("start", 0, 0)

    def next_words(self, state: tuple[str, int, int], remaining: int | None) -> tuple[frozenset[int], bool]:
        """(the keyword ids allowed next, whether a name word may come next) in ``state`` with
        ``remaining`` text tokens left before the marker is forced (None: no budget)."""
        where, n_objects, name_len = state
        room = 10**9 if remaining is None else remaining
        if where == "start":
            return frozenset({self.see}), False
        if where == "see":  # an item needs NAME COLUMN ROW, then "holding nothing": 5 tokens
            return frozenset({self.nothing} | (self.columns if room >= 5 else set())), room >= 5
        if where == "saw_nothing":
            return frozenset({self.holding}), False
        if where == "name":
            return self.columns, room >= 5 and name_len < self.max_name_words
        if where == "column":  # the row, or the column word was a name word and the name goes on
            return self.rows, room >= 5 and name_len + 1 < self.max_name_words
        if where == "item":  # ", NAME COLUMN ROW holding nothing": 6 tokens
            more = n_objects < self.max_objects and room >= 6
            return frozenset({self.holding, self.comma} if more else {self.holding}), False
        if where == "comma":
            return self.columns, True
        if where == "holding":
            return frozenset({self.nothing}), room >= 1
        if where == "held_name":
            return frozenset({self.marker}), room >= 1 and name_len < self.max_name_words
        return frozenset({self.marker}), False  # "held_nothing"

    def advance(self, state: tuple[str, int, int], token: int) -> tuple[str, int, int]:
        where, n_objects, name_len = state
        is_name = token not in self.non_names
        if where == "start":
            return ("see", 0, 0)
        if where == "see":
            return ("saw_nothing", 0, 0) if token == self.nothing else ("name", 0, 1)
        if where == "saw_nothing":
            return ("holding", 0, 0)
        if where == "comma":  # a name word or a column word: the name's first word either way
            return ("name", n_objects, 1)
        if where == "name":
            return ("name", n_objects, name_len + 1) if is_name else ("column", n_objects, name_len)
        if where == "column":
            return ("item", n_objects + 1, 0) if token in self.rows else ("name", n_objects, name_len + 2)
        if where == "item":
            return ("comma", n_objects, 0) if token == self.comma else ("holding", n_objects, 0)
        if where in ("holding", "held_name"):
            return ("held_name", n_objects, name_len + 1) if is_name else ("held_nothing", n_objects, 0)
        return state


class DecodeConstraint:
    """Grammar of one answer: text, then optionally images of a fixed grid, then text, then EOS."""

    def __init__(
        self,
        layout: TokenLayout,
        grid: tuple[int, int],
        max_images: int = 1,
        min_images: int = 0,
        max_text_tokens: int | None = None,
        end_after_image: bool = False,
        forbid_in_text: Iterable[int] = (),
        final_ids: Iterable[int] = (),
        text_before_image: bool = False,
        text_id_limit: int | None = None,
        banned: Iterable[Sequence[int]] = (),
        mentions: tuple[Iterable[Sequence[int]], Iterable[Sequence[int]]] | None = None,
        step_marker: int | None = None,
        perception_only: Iterable[int] = (),
        perception_grammar: PerceptionGrammar | None = None,
    ) -> None:
        self.layout = layout
        self.block = layout.image_block(*grid)
        if not 0 <= min_images <= max_images:
            raise ValueError(f"need 0 <= min_images <= max_images, got {min_images}, {max_images}")
        self.max_images = max_images
        self.min_images = min_images  # EOS is illegal until this many images were emitted
        self.max_text_tokens = max_text_tokens  # per text run; when reached, BOI (if owed) or EOS is forced
        self.end_after_image = end_after_image  # answer grammar "text IMAGE EOS": EOS forced after EOI
        self._fixed = dict(zip(self.block.fixed_offsets.tolist(), self.block.fixed_ids.tolist()))
        # Never legal in text: visual codes (id range, see _text_mask), padding/mask, BOS, and the
        # structural tokens that only exist inside an image block.
        self._text_forbidden = {layout.pad, layout.mask_id, layout.bos, layout.img, layout.eoi, layout.eol, layout.eof}
        self._text_forbidden.update(int(t) for t in forbid_in_text)
        # A final marker (compact's <done>) may only open the answer, and EOS is forced after it.
        self.final_ids = {int(t) for t in final_ids}
        self.text_before_image = text_before_image  # no BOI as the first token of a text run
        # Text ids the text tokenizer can decode: ids below min(limit, visual_offset); specials still pass.
        self.text_id_limit = layout.visual_offset if text_id_limit is None else min(int(text_id_limit), layout.visual_offset)
        self._specials = {layout.eos, layout.boi, *self.final_ids}
        # Answers the caller rejected (re-planning): an answer opening with banned[:-1] may not go on
        # with banned[-1], so the exact rejected text (or the final marker) cannot come back.
        self.banned = [tuple(int(t) for t in b) for b in banned if len(b)]
        # Grounded decoding: (known, allowed) token sequences of names. Text may mention a known
        # name only when it is allowed (the caller's detector sees it); see _mention_rule.
        # No known names: no constraint. Known but none allowed: no known name may be mentioned.
        known, allowed = mentions if mentions is not None else ((), ())
        self.allowed_mentions = {tuple(int(t) for t in a) for a in allowed if len(a)}
        self.known_mentions = {tuple(int(t) for t in k) for k in known if len(k)} | self.allowed_mentions
        # First words of names not on offer that a look-ahead showed open another phrase here ("left"
        # of "left sleeve" in "the left bin"); cleared by every advance (see ``maybe_name_starts``).
        self._words_not_names: set[int] = set()
        self._masks: dict[tuple, torch.Tensor] = {}
        # "perceive" answers: the token that ends the perception; None: the step starts at once.
        self.step_marker = None if step_marker is None else int(step_marker)
        if self.step_marker is not None and (self.step_marker >= layout.visual_offset or self.step_marker in
                                             {layout.eos, layout.boi, *self.final_ids, *self._text_forbidden}):
            raise ValueError(f"step_marker {step_marker} must be a plain text id")
        self.step_start: int | None = 0 if self.step_marker is None else None  # index in tokens where the step begins
        # Words only a perception uses ("see", "holding"): banned in the step, so a re-plan whose
        # first choice was banned cannot drift into a second perception inside the step sentence.
        self.perception_only = sorted(int(t) for t in perception_only)
        self.perception_grammar = perception_grammar if self.step_marker is not None else None
        self._pstate = PerceptionGrammar.START
        self.phase = Phase.TEXT
        self.offset = 0  # position inside the current image block (BOI = 0)
        self.images_done = 0
        self.text_run = 0  # tokens sampled in the current text run
        self.tokens: list[int] = []

    # ---- queries -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    @property
    def at_image_start(self) -> bool:
        """True right after BOI was emitted: the next token is the first of the size header."""
        return self.phase is Phase.IMAGE and self.offset == 1

    @property
    def in_perception(self) -> bool:
        """True while a "perceive" answer's perception is being written (the marker not yet out)."""
        return self.step_start is None

    def _step_tokens(self) -> list[int]:
        return self.tokens[self.step_start or 0 :]

    def forced(self) -> int | None:
        """The only legal next token, or None when the model must choose."""
        if self.phase is Phase.IMAGE:
            return self._fixed.get(self.offset)
        if self.in_perception:
            if self.max_text_tokens is not None and self.text_run >= self.max_text_tokens:
                return self.step_marker
            if self.perception_grammar is not None:
                words, names = self._perception_next()
                if not names and len(words) == 1:
                    return next(iter(words))
            return None
        if self.phase is Phase.TEXT:
            if self.tokens and self.tokens[-1] in self.final_ids:
                return self.layout.eos
            if self.end_after_image and self.images_done > 0:
                return self.layout.eos
            if self.max_text_tokens is not None and self.text_run >= self.max_text_tokens:
                return self.layout.boi if self.images_done < self.min_images else self.layout.eos
        return None

    def allowed_mask(self, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(vocab_size,) bool: which ids may be sampled next (the model's vocab may exceed the layout's)."""
        if self.phase is Phase.DONE:
            raise ConstraintError("the answer is complete (EOS emitted); nothing may follow")
        if self.phase is Phase.IMAGE:
            kind = "cell"
        elif self.images_done >= self.max_images:
            kind = "text_noimg"  # no BOI any more
        elif self.images_done < self.min_images:
            kind = "text_noeos"  # an image is still owed: no EOS yet
        else:
            kind = "text"
        perceiving = self.in_perception
        first = not perceiving and len(self.tokens) == self.step_start and self.phase is Phase.TEXT
        run_start = self.phase is Phase.TEXT and self.text_run == 0
        key = (kind, vocab_size, str(device), first, run_start, perceiving)
        if key not in self._masks:
            lay = self.layout
            mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if kind == "cell":
                mask[lay.visual_offset : lay.visual_offset + lay.num_visual_codes] = True
            else:
                mask[: self.text_id_limit] = True  # text the tokenizer can decode, and specials
                mask[sorted(self._specials)] = True
                mask[sorted(self._text_forbidden)] = False
                if kind == "text_noimg":
                    mask[lay.boi] = False
                if kind == "text_noeos":
                    mask[lay.eos] = False
                if run_start and self.text_before_image:
                    mask[lay.boi] = False
                if not first and self.final_ids:
                    mask[sorted(self.final_ids)] = False
                if perceiving:  # text only, ended by the marker (not as the first token)
                    mask[[lay.eos, lay.boi]] = False
                    if run_start:
                        mask[self.step_marker] = False
                elif self.step_marker is not None:  # one perception per answer: no marker in the step
                    mask[self.step_marker] = False
                    mask[self.perception_only] = False
            self._masks[key] = mask
        if perceiving and self.perception_grammar is not None:
            words, names = self._perception_next()
            mask = self._masks[key] & self._name_mask(vocab_size, device) if names else torch.zeros_like(self._masks[key])
            mask[[t for t in words if t < vocab_size]] = True
            return mask
        mention_banned, mention_only, _ = self._mention_rule()
        banned = self._banned_next() | mention_banned
        if not banned and mention_only is None:
            return self._masks[key]
        mask = self._masks[key].clone()
        if banned:
            mask[[t for t in banned if t < vocab_size]] = False
        if mention_only is not None:
            only = torch.zeros_like(mask)
            only[[t for t in mention_only if t < vocab_size]] = True
            mask &= only
        return mask

    def _perception_next(self) -> tuple[frozenset[int], bool]:
        remaining = None if self.max_text_tokens is None else self.max_text_tokens - self.text_run
        return self.perception_grammar.next_words(self._pstate, remaining)

    def _name_mask(self, vocab_size: int, device: torch.device | str) -> torch.Tensor:
        """Ids that may be a word of an object's name: plain text, no perception keyword."""
        key = ("names", vocab_size, str(device))
        if key not in self._masks:
            mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            mask[: self.text_id_limit] = True
            mask[[t for t in {*self._text_forbidden, *self._specials, *self.perception_grammar.non_names}
                  if t < vocab_size]] = False
            self._masks[key] = mask
        return self._masks[key]

    def _banned_next(self) -> set[int]:
        """Tokens that would complete a banned answer right now (only in the opening text run)."""
        if not self.banned or self.phase is not Phase.TEXT or self.images_done or self.in_perception:
            return set()
        step = self._step_tokens()
        n = len(step)
        return {b[n] for b in self.banned if len(b) == n + 1 and tuple(step) == b[:n]}

    def _mention_rule(self) -> tuple[set[int], set[int] | None, set[int]]:
        """Grounded decoding: (tokens banned next, the only tokens allowed next or None, turned down).

        - Inside a mention (the text ends with a proper prefix of an allowed name) the mention must
          be finished: only the allowed names' next tokens may follow ("small" -> "red" -> "block").
        - Otherwise a token that would extend a known name's prefix is banned unless an allowed
          name has the same prefix; the longest prefix decides ("small red" continues "small red
          block", a bare "red" starts "red block"). Tokens that extend no known name stay free.
        "Turned down": known-name tokens refused here while an allowed name is on offer instead
        (the model wanted some name, the detector chose which); see ``allowed_probability``.
        """
        if not self.known_mentions or self.phase is not Phase.TEXT or self.in_perception:
            return set(), None, set()
        run = self.tokens[len(self.tokens) - self.text_run :] if self.text_run else []
        longest_allowed = max((len(a) for a in self.allowed_mentions), default=0)
        blocked = self._banned_next()  # a rejected answer's last token: never force it
        for j in range(min(len(run), longest_allowed - 1), 0, -1):
            only = {a[j] for a in self.allowed_mentions if len(a) > j and a[:j] == tuple(run[-j:])} - blocked
            if only:
                others = {k[j] for k in self.known_mentions if len(k) > j and k[:j] == tuple(run[-j:])}
                return set(), only, others - only
        longest: dict[int, int] = {}  # token -> longest known prefix (in tokens) it would extend
        extends_allowed: set[tuple[int, int]] = set()
        for name in self.known_mentions:
            allowed = name in self.allowed_mentions
            for j in range(min(len(name), len(run) + 1)):
                if j and tuple(run[-j:]) != name[:j]:
                    continue
                token = name[j]
                longest[token] = max(longest.get(token, -1), j)
                if allowed:
                    extends_allowed.add((token, j))
        banned = {t for t, j in longest.items() if (t, j) not in extends_allowed} - self._words_not_names
        offered = any((t, j) in extends_allowed for t, j in longest.items())
        return banned, None, banned if offered else set()

    def maybe_name_starts(self) -> set[int]:
        """Tokens the mention rule bans here only as the first word of names not on offer, where the
        word may also open a phrase that is no name ("left" of "left sleeve", said in "the left bin").

        A one-word name is not among them (it is a whole mention). A decoder that can look one token
        ahead offers them anyway and asks ``name_follows`` whether the model goes on with a name.
        """
        if not self.known_mentions or self.phase is not Phase.TEXT or self.in_perception:
            return set()
        banned, only, _ = self._mention_rule()
        if only is not None or not banned:
            return set()
        run = self.tokens[len(self.tokens) - self.text_run :] if self.text_run else []
        deeper = {k[j] for k in self.known_mentions for j in range(1, min(len(k), len(run) + 1))
                  if tuple(run[-j:]) == k[:j]}  # tokens that would go on with a name already begun
        whole = {k[0] for k in self.known_mentions if len(k) == 1}
        firsts = {k[0] for k in self.known_mentions}
        starts = set()
        for t in (banned & firsts) - deeper - whole:  # only where nothing but the mention rule bans it
            self._words_not_names.add(t)
            if self.is_allowed(t):
                starts.add(t)
            self._words_not_names.discard(t)
        return starts

    def name_follows(self, token: int, next_logits: torch.Tensor) -> bool:
        """Whether the model, having written ``token`` (one of ``maybe_name_starts``), would go on
        with a known name: its likeliest next token (``next_logits`` (V,)) is a name's second token.
        False makes ``token`` allowed at this position (until the next advance)."""
        seconds = {k[1] for k in self.known_mentions if len(k) > 1 and k[0] == token}
        if int(next_logits.argmax()) in seconds:
            return True
        self._words_not_names.add(int(token))
        return False

    def allowed_probability(self, probs: torch.Tensor) -> float:
        """How much of the model's next-token distribution ``probs`` (V,) this answer can honour here.

        The allowed tokens' probability, plus the names grounded decoding turned down while it
        offered a present one instead: a model that wants to name some object is honoured when
        one is there (the detector picks which), not when nothing it could name is present.
        """
        allowed = self.allowed_mask(probs.shape[-1], probs.device)
        turned_down = [t for t in self._mention_rule()[2] if t < probs.shape[-1]]
        return float(probs[allowed].sum() + (probs[turned_down].sum() if turned_down else 0.0))

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Set disallowed ids to -inf in logits (..., V)."""
        allowed = self.allowed_mask(logits.shape[-1], logits.device)
        return logits.masked_fill(~allowed, float("-inf"))

    def is_allowed(self, token: int) -> bool:
        forced = self.forced()
        if forced is not None:
            return token == forced
        if self.phase is Phase.DONE:
            return False
        lay = self.layout
        if self.phase is Phase.IMAGE:
            return bool(lay.is_visual(token))
        if not 0 <= token < lay.visual_offset or token in self._text_forbidden:
            return False
        if token >= self.text_id_limit and token not in self._specials:
            return False
        if token == lay.eos and self.images_done < self.min_images:
            return False
        if token == lay.boi and self.text_before_image and self.text_run == 0:
            return False
        if self.in_perception and (token in (lay.eos, lay.boi) or token in self.final_ids
                                   or (token == self.step_marker and self.text_run == 0)):
            return False
        if self.in_perception and self.perception_grammar is not None:
            words, names = self._perception_next()
            return token in words or (names and token not in self.perception_grammar.non_names
                                      and token not in self._specials)
        if not self.in_perception and self.step_marker is not None and (token == self.step_marker
                                                                         or token in self.perception_only):
            return False  # one perception per answer: the step text has no marker, no "see"/"holding"
        if token in self.final_ids and len(self.tokens) != self.step_start:
            return False
        if token in self._banned_next():
            return False
        mention_banned, mention_only, _ = self._mention_rule()
        if token in mention_banned or (mention_only is not None and token not in mention_only):
            return False
        return not (token == lay.boi and self.images_done >= self.max_images)

    # ---- transitions -------------------------------------------------------------------------
    def advance(self, token: int) -> None:
        """Consume one emitted token; ConstraintError if the grammar does not allow it."""
        token = int(token)
        if not self.is_allowed(token):
            raise ConstraintError(f"token {token} is not allowed in phase {self.phase.value} at offset {self.offset}")
        self.tokens.append(token)
        self._words_not_names.clear()
        lay = self.layout
        if self.phase is Phase.TEXT:
            if token == lay.eos:
                self.phase = Phase.DONE
            elif token == lay.boi:
                self.phase, self.offset = Phase.IMAGE, 1
            elif self.in_perception and token == self.step_marker:
                self.step_start, self.text_run = len(self.tokens), 0  # the step begins after the marker
            else:
                if self.in_perception and self.perception_grammar is not None:
                    self._pstate = self.perception_grammar.advance(self._pstate, token)
                self.text_run += 1
        else:  # IMAGE
            self.offset += 1
            if self.offset == self.block.length:  # EOI consumed
                self.phase, self.offset, self.text_run = Phase.TEXT, 0, 0
                self.images_done += 1

    def advance_all(self, tokens: Iterable[int]) -> None:
        for t in tokens:
            self.advance(t)
