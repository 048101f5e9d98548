"""Token layout: where text, special and visual ids live, and how an image sits in the stream.

One object, three presets:

- ``emu35``: the real Emu3.5 ids (vocabulary 282,926 = 151,854 Qwen text + 131,072 visual).
  Image: ``BOI "h*w" IMG row EOL row EOL ... row EOI`` (no EOL after the last row).
- ``emu3``: Emu3 v1 ids (vocabulary 184,622 = 151,854 text + 32,768 visual).
  Image: ``BOI "h*w" IMG row EOL ... row EOL EOF EOI`` (EOL after every row, then EOF).
- ``compact(...)``: the default tiny model's own vocabulary: a few specials, digits and '*'
  for the size header, the default text tokenizer's words, then the visual codes.

Everything that writes or reads image tokens (prompt builders, constrained decoding, DiDA,
output parsers, the training sequence builder) goes through this object, never through raw ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ImageBlock", "LayoutError", "TokenLayout", "get_layout", "LAYOUT_PRESETS"]


class LayoutError(ValueError):
    """A token stream does not follow the layout (bad image block, id out of range...)."""


@dataclass(frozen=True)
class ImageBlock:
    """Where the pieces of one serialised image sit, relative to the block start (the BOI)."""

    height: int  # rows of codes
    width: int  # codes per row
    length: int  # total tokens from BOI to EOI inclusive
    cell_offsets: np.ndarray  # (height*width,) offsets of the visual-code cells, row-major
    fixed_offsets: np.ndarray  # offsets of every structural token (BOI, header, IMG, EOL, EOF, EOI)
    fixed_ids: np.ndarray  # the ids at fixed_offsets


@dataclass(frozen=True)
class TokenLayout:
    """Ids and image serialisation of one model family. Construct through a preset."""

    name: str
    vocab_size: int
    visual_offset: int  # visual code c has id visual_offset + c
    num_visual_codes: int
    pad: int
    bos: int
    eos: int
    img: int
    boi: int
    eoi: int
    eol: int
    eof: int
    digit_ids: tuple[int, ...]  # ids of '0'..'9' (size header)
    star_id: int  # id of '*' (size header)
    eol_after_last_row: bool  # Emu3 v1: True; Emu3.5: False
    eof_before_eoi: bool  # Emu3 v1: True; Emu3.5: False
    # Absorbing-state id for DiDA's masked initialisation. Emu3.5/Emu3 have no mask token: we use
    # PAD, which never appears inside an image, so its embedding is free to learn "unknown cell".
    mask_id: int = -1
    # Extra named specials a prompt builder may use (assistant segment, reasoning markers...).
    extra: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.visual_offset + self.num_visual_codes > self.vocab_size:
            raise ValueError(
                f"layout {self.name!r}: visual ids end at {self.visual_offset + self.num_visual_codes}"
                f" beyond vocab_size {self.vocab_size}"
            )
        if len(self.digit_ids) != 10:
            raise ValueError(f"layout {self.name!r}: need 10 digit ids, got {len(self.digit_ids)}")
        specials = [self.pad, self.bos, self.eos, self.img, self.boi, self.eoi, self.eol, self.eof, self.mask_id]
        for sid in specials + list(self.digit_ids) + [self.star_id]:
            if not 0 <= sid < self.visual_offset:
                raise ValueError(f"layout {self.name!r}: special id {sid} not in the text range")

    # ---- id classes -------------------------------------------------------------------------
    @property
    def text_vocab_size(self) -> int:
        """Ids below this are text (including specials); ids at or above are visual codes."""
        return self.visual_offset

    def is_visual(self, token_id: int | np.ndarray) -> bool | np.ndarray:
        t = np.asarray(token_id)
        out = (t >= self.visual_offset) & (t < self.visual_offset + self.num_visual_codes)
        return bool(out) if out.ndim == 0 else out

    def code_to_id(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_visual_codes):
            raise LayoutError(
                f"layout {self.name!r}: visual codes must be in [0, {self.num_visual_codes}),"
                f" got range [{codes.min()}, {codes.max()}]"
            )
        return codes + self.visual_offset

    def id_to_code(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and not np.all(self.is_visual(ids)):
            bad = ids[~np.asarray(self.is_visual(ids))][0]
            raise LayoutError(f"layout {self.name!r}: id {bad} is not a visual token")
        return ids - self.visual_offset

    # ---- image serialisation ----------------------------------------------------------------
    def size_header(self, height: int, width: int) -> list[int]:
        """The ``"h*w"`` header as ids (one id per digit, as Qwen's tokenizer splits digits)."""
        if height <= 0 or width <= 0:
            raise LayoutError(f"image grid must be positive, got {height}x{width}")
        return [self.digit_ids[int(c)] for c in str(height)] + [self.star_id] + [
            self.digit_ids[int(c)] for c in str(width)
        ]

    def image_block(self, height: int, width: int) -> ImageBlock:
        """Offsets of cells and structural tokens for an image of height x width codes."""
        fixed_off: list[int] = []
        fixed_ids: list[int] = []
        cells: list[int] = []
        pos = 0

        def put(tok: int) -> None:
            nonlocal pos
            fixed_off.append(pos)
            fixed_ids.append(tok)
            pos += 1

        put(self.boi)
        for tok in self.size_header(height, width):
            put(tok)
        put(self.img)
        for r in range(height):
            cells.extend(range(pos, pos + width))
            pos += width
            if r < height - 1 or self.eol_after_last_row:
                put(self.eol)
        if self.eof_before_eoi:
            put(self.eof)
        put(self.eoi)
        return ImageBlock(
            height=height,
            width=width,
            length=pos,
            cell_offsets=np.asarray(cells, dtype=np.int64),
            fixed_offsets=np.asarray(fixed_off, dtype=np.int64),
            fixed_ids=np.asarray(fixed_ids, dtype=np.int64),
        )

    def serialize_image(self, codes: np.ndarray) -> list[int]:
        """(h, w) visual codes -> token ids from BOI to EOI inclusive."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise LayoutError(f"expected a 2-D (h, w) code grid, got shape {codes.shape}")
        block = self.image_block(*codes.shape)
        out = np.empty(block.length, dtype=np.int64)
        out[block.fixed_offsets] = block.fixed_ids
        out[block.cell_offsets] = self.code_to_id(codes).reshape(-1)
        return out.tolist()

    def parse_image(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Token ids from BOI to EOI inclusive -> (h, w) codes; LayoutError on any deviation."""
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if toks.size < 2 or toks[0] != self.boi:
            raise LayoutError(f"image block must start with BOI ({self.boi})")
        try:
            img_at = int(np.nonzero(toks == self.img)[0][0])
        except IndexError:
            raise LayoutError("image block has no IMG token after its size header") from None
        height, width = self._parse_header(toks[1:img_at])
        block = self.image_block(height, width)
        if toks.size != block.length:
            raise LayoutError(
                f"image block of {height}x{width} needs {block.length} tokens, got {toks.size}"
            )
        if not np.array_equal(toks[block.fixed_offsets], block.fixed_ids):
            raise LayoutError(f"image block {height}x{width}: structural tokens (EOL/EOF/EOI) misplaced")
        return self.id_to_code(toks[block.cell_offsets]).reshape(height, width)

    def _parse_header(self, header: np.ndarray) -> tuple[int, int]:
        digit_of = {tid: d for d, tid in enumerate(self.digit_ids)}
        text = []
        for tid in header.tolist():
            if tid == self.star_id:
                text.append("*")
            elif tid in digit_of:
                text.append(str(digit_of[tid]))
            else:
                raise LayoutError(f"image size header contains non-digit id {tid}")
        parts = "".join(text).split("*")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise LayoutError(f"image size header {''.join(text)!r} is not 'h*w'")
        return int(parts[0]), int(parts[1])

    def find_images(self, tokens: list[int] | np.ndarray) -> list[tuple[int, int]]:
        """(start, end_exclusive) spans of every BOI..EOI block in ``tokens``."""
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        spans = []
        starts = np.nonzero(toks == self.boi)[0]
        for s in starts.tolist():
            ends = np.nonzero(toks[s:] == self.eoi)[0]
            if ends.size == 0:
                raise LayoutError(f"image block at {s} has no EOI")
            spans.append((s, s + int(ends[0]) + 1))
        return spans


# ---- presets --------------------------------------------------------------------------------
_QWEN_DIGITS = tuple(range(15, 25))  # '0'..'9' in the Qwen tokenizer
_QWEN_STAR = 9  # '*'


def emu35() -> TokenLayout:
    """Real Emu3.5 ids (see shared FACTS: vocab 282,926; visual code c is 151,854 + c)."""
    return TokenLayout(
        name="emu35",
        vocab_size=282_926,
        visual_offset=151_854,
        num_visual_codes=131_072,
        pad=151_643,
        bos=151_849,
        eos=151_850,
        img=151_851,
        boi=151_852,
        eoi=151_853,
        eol=151_846,
        eof=151_847,
        digit_ids=_QWEN_DIGITS,
        star_id=_QWEN_STAR,
        eol_after_last_row=False,
        eof_before_eoi=False,
        mask_id=151_643,
        extra={
            "assistant_start": 151_746,
            "assistant_end": 151_747,
            "image_reasoning_start": 151_696,
            "image_reasoning_end": 151_697,
            "global_reasoning_start": 151_706,
            "global_reasoning_end": 151_707,
        },
    )


def emu3() -> TokenLayout:
    """Emu3 v1 ids: same text/special ids, 32,768 codes, EOL after every row then EOF."""
    return TokenLayout(
        name="emu3",
        vocab_size=184_622,
        visual_offset=151_854,
        num_visual_codes=32_768,
        pad=151_643,
        bos=151_849,
        eos=151_850,
        img=151_851,
        boi=151_852,
        eoi=151_853,
        eol=151_846,
        eof=151_847,
        digit_ids=_QWEN_DIGITS,
        star_id=_QWEN_STAR,
        eol_after_last_row=True,
        eof_before_eoi=True,
        mask_id=151_643,
    )


# Compact layout: fixed specials at the bottom, then text words, then visual codes.
COMPACT_SPECIALS = (
    "<pad>", "<bos>", "<eos>", "<img>", "<boi>", "<eoi>", "<eol>", "<eof>",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*",
    "<user>", "<assistant>", "<step>", "<done>", "<history>", "<unk>", "<mask>",
)  # fmt: skip
COMPACT_NUM_SPECIALS = 32  # room for a few more specials without shifting the text ids


def compact(num_text_words: int, num_visual_codes: int) -> TokenLayout:
    """The default tiny model's layout: 32 specials, ``num_text_words`` words, then codes."""
    if num_text_words < 0 or num_visual_codes <= 0:
        raise ValueError(f"compact layout needs words >= 0 and codes > 0, got {num_text_words}, {num_visual_codes}")
    sid = {name: i for i, name in enumerate(COMPACT_SPECIALS)}
    visual_offset = COMPACT_NUM_SPECIALS + num_text_words
    return TokenLayout(
        name="compact",
        vocab_size=visual_offset + num_visual_codes,
        visual_offset=visual_offset,
        num_visual_codes=num_visual_codes,
        pad=sid["<pad>"],
        bos=sid["<bos>"],
        eos=sid["<eos>"],
        img=sid["<img>"],
        boi=sid["<boi>"],
        eoi=sid["<eoi>"],
        eol=sid["<eol>"],
        eof=sid["<eof>"],
        digit_ids=tuple(sid[str(d)] for d in range(10)),
        star_id=sid["*"],
        eol_after_last_row=False,
        eof_before_eoi=False,
        mask_id=sid["<mask>"],
        extra={k.strip("<>"): v for k, v in sid.items() if k in ("<user>", "<assistant>", "<step>", "<done>", "<history>", "<unk>")},
    )


LAYOUT_PRESETS = {"emu35": emu35, "emu3": emu3}


def get_layout(name: str, **kwargs: int) -> TokenLayout:
    """Preset by name: 'emu35', 'emu3', or 'compact' (needs num_text_words, num_visual_codes)."""
    if name == "compact":
        return compact(**kwargs)
    try:
        return LAYOUT_PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown token layout {name!r}; expected 'emu35', 'emu3' or 'compact'") from None
