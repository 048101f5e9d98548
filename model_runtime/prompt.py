"""Prompts, answers and training sequences, written once against ``TokenLayout``.

A guidance step is one assistant turn:

    prompt  = what the model conditions on (instruction, done steps, current frame)
    answer  = step text, the subgoal image block, EOS      (a step)
            | the done marker, EOS                         (the task is finished)

Per layout (``layout.name``):

- ``compact`` (default tiny model), everything as ids of the compact vocabulary:
  prompt ``<bos> <user> instruction [<history> step]... <image block> <assistant>``;
  answer ``step-words <image block> <eos>`` or ``<done> <eos>``.
- ``emu35`` (real Emu3.5 template, see shared FACTS):
  ``<|extra_203|>You are a helpful assistant for {task} task.{extra} USER: {question}<|IMAGE|> ASSISTANT: <|extra_100|>``
  with the image block in place of ``<|IMAGE|>``; the question holds the instruction and the
  done steps as text. Answer: ``step text <image block> EOS`` or ``DONE_TEXT EOS`` (Emu3.5 has no
  done token, so a fixed sentence marks the end).
- ``emu3`` (Emu3 v1 has no task templates; we use its chat format, image before the question):
  ``<|extra_203|>You are a helpful assistant. USER: <image block>{question} ASSISTANT: `` and the
  same answer format as emu35.

Specials (BOS, BOI, assistant start...) come from the layout, never from the text tokenizer; text
pieces are tokenised separately, which for byte-level BPE equals tokenising the whole template
(BPE never merges across a special token).

Classifier-free guidance: ``build_unconditional_prompt`` keeps the image and drops the question
text (emu35: the release's own unconditional prompt, ``<|extra_203|>You are a helpful assistant.
USER: <|IMAGE|> ASSISTANT: <|extra_100|>``, which also drops the task); both prompts end with the same assistant-start marker, so the same generated answer tokens
can be appended to both. They differ in length: batch them with ``pad_batch`` (left padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model_runtime.layout import COMPACT_NUM_SPECIALS, LayoutError, TokenLayout
from model_runtime.text_tokenizer import TextTokenizer, split_words

__all__ = [
    "DONE_TEXT",
    "IGNORE_INDEX",
    "TASKS",
    "ImageSpan",
    "ParseError",
    "ParsedStep",
    "TrainingSequence",
    "PLAN_REQUEST",
    "PLAN_SEPARATOR",
    "ANSWER_FORMATS",
    "check_answer_format",
    "PERCEPTION_MARKER",
    "PERCEPTION_WORDS",
    "answer_marker_id",
    "format_perception",
    "parse_perception",
    "perception_texts",
    "perception_in_reading_order",
    "position_cell",
    "split_perception_ids",
    "answer_opening_ids",
    "build_answer",
    "build_plan_sequence",
    "build_prompt",
    "build_training_sequence",
    "build_unconditional_prompt",
    "format_question",
    "pad_batch",
    "parse_answer",
]

TASKS = ("t2i", "x2i", "howto", "story", "explore", "vla")  # Emu3.5's template tasks
PLAN_REQUEST = "list the remaining steps:"  # rest-of-plan training sequences: prefix of the instruction
PLAN_SEPARATOR = ";"  # between the steps of a rest-of-plan answer
DONE_TEXT = "Task complete."  # the final answer's text (emu35/emu3); compact uses the <done> token
IGNORE_INDEX = -100  # label of positions that carry no loss (the prompt)
_EMU35_SYSTEM = "You are a helpful assistant for {task} task.{extra}"
_EMU3_SYSTEM = "You are a helpful assistant."


class ParseError(ValueError):
    """Generated tokens do not follow the answer format; the message says where and how."""


@dataclass
class ParsedStep:
    """One parsed assistant answer."""

    text: str  # the step sentence (DONE_TEXT when final)
    codes: np.ndarray | None  # (h, w) int64 subgoal codes; None when final
    is_final: bool  # the model says the task is complete
    # answer format "perceive": what the model saw ({"objects": [...], "holding": name | None},
    # see parse_perception); None in the plain "step" format
    perception: dict | None = None


@dataclass(frozen=True)
class ImageSpan:
    """One image block inside a sequence: tokens ``[start, end)`` from BOI to EOI inclusive."""

    start: int
    end: int
    height: int  # rows of codes
    width: int  # codes per row
    is_target: bool  # True: in the answer (trained on, DiDA-noised); False: conditioning frame


@dataclass
class TrainingSequence:
    """One supervised example; every array has the same length T.

    ``labels[i] == input_ids[i]`` on answer positions and ``IGNORE_INDEX`` on the prompt (the
    transformers convention: the loss shifts by one itself). ``loss_weights`` is 0 on the prompt,
    1 on answer text/structure tokens and ``visual_loss_weight`` on answer visual-code cells.
    """

    input_ids: np.ndarray  # (T,) int64
    labels: np.ndarray  # (T,) int64
    loss_weights: np.ndarray  # (T,) float32
    image_spans: list[ImageSpan] = field(default_factory=list)
    prompt_length: int = 0  # answer starts here
    # "step" (a guidance answer) or "plan" (auxiliary rest-of-plan answer, training only)
    kind: str = "step"
    # Training-only targets of the perception probe: per prompt-frame token, 1 + the class of the object
    # centred in it, 0 for none (finetune_embodied.sequences.frame_cell_targets); None when not recorded.
    frame_cells: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# ---- perception (answer format "perceive") ---------------------------------------------------
# A model directory's guidance.json may say ``"answer": "perceive"``: every answer then starts with
# what the model sees in the current frame, then the step (or the done marker):
#
#   see red cup left back , teal fork middle front holding nothing . pick up the red cup <image> <eos>
#   see nothing holding blue block . <done> <eos>
#
# ``see`` + the objects on the table (name, then a coarse cell of the frame: column left/middle/right
# by thirds of the image width, row back/front by halves of its height; in reading order:
# top to bottom in bands of 1/READING_BANDS of the height, left to right within a band, which is
# the order of the image tokens of a 12x12 grid), ``holding`` + the held object or ``nothing``, then
# PERCEPTION_MARKER. Both the cell borders and the bands fall on image-token borders (12x12 codes at
# 96 px), so each object's cell and place in the list follow from the one token its centre lies in.
# The marker is
# one word token, so the decoding grammar knows where the step begins (model_runtime.decoding:
# ``answer_grammar(layout, "perceive", text_tok)``). Compact (word) layout only.
ANSWER_FORMATS = ("step", "perceive")
PERCEPTION_MARKER = "."  # ends the perception; the step (or <done>) follows
COLUMNS = ("left", "middle", "right")  # image thirds, left to right
ROWS = ("back", "front")  # top (far from the camera) and bottom part of the image
ROW_SPLIT = 0.5  # back above this fraction of the height (a token-row border of any even grid)
READING_BANDS = 12  # reading order: bands of 1/12 of the height (the rows of a 12x12 token grid)
_PERCEPTION_KEYWORDS = ("see", "nothing", "holding", ",", PERCEPTION_MARKER)
PERCEPTION_WORDS = (*_PERCEPTION_KEYWORDS, *COLUMNS, *ROWS)
PERCEPTION_ONLY_WORDS = ("see", "holding")  # never in a step sentence (the decoding grammar bans them there)


def check_answer_format(answer_format: str) -> str:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; expected one of {ANSWER_FORMATS}")
    return answer_format


def perception_texts() -> list[str]:
    """Texts that put every perception word into a word vocabulary (``WordTokenizer.build``)."""
    return [" ".join(PERCEPTION_WORDS)]


def position_cell(u: float, v: float, width: float, height: float) -> str:
    """The coarse cell of pixel (u, v) in a width x height frame, e.g. ``"left back"``."""
    if not (width > 0 and height > 0):
        raise ValueError(f"frame size must be positive, got {width} x {height}")
    col = COLUMNS[min(max(int(3.0 * float(u) / width), 0), 2)]
    row = ROWS[0 if float(v) < ROW_SPLIT * height else 1]
    return f"{col} {row}"


def perception_in_reading_order(objects: list[dict], holding: str | None, width: float, height: float) -> dict:
    """``objects`` (dicts with ``name`` and ``pixel`` [u, v]) -> ``{"objects": [{"name", "cell", "pixel"}],
    "holding"}`` with each object's cell, in reading order (band of READING_BANDS, then pixel column)."""
    out = [{"name": o["name"], "cell": position_cell(*o["pixel"], width, height), "pixel": list(o["pixel"])}
           for o in objects]
    out.sort(key=lambda o: (min(int(READING_BANDS * o["pixel"][1] / height), READING_BANDS - 1), o["pixel"][0]))
    return {"objects": out, "holding": holding}


def _check_name(name: object, what: str) -> str:
    name = _clean_text(name, what).lower()
    bad = [w for w in name.split() if w in _PERCEPTION_KEYWORDS]
    if bad:
        raise ValueError(f"{what} {name!r} contains the perception keyword(s) {bad}")
    return name


def format_perception(objects: list[dict], holding: str | None) -> str:
    """The perception text: ``objects`` as dicts with ``name`` and ``cell`` (kept in the given order;
    callers sort them in reading order), ``holding`` the held object's name or None."""
    items = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or "name" not in obj or "cell" not in obj:
            raise ValueError(f"objects[{i}] must be a dict with 'name' and 'cell', got {obj!r}")
        name = _check_name(obj["name"], f"objects[{i}].name")
        cell = " ".join(str(obj["cell"]).split())
        parts = cell.split()
        if len(parts) != 2 or parts[0] not in COLUMNS or parts[1] not in ROWS:
            raise ValueError(f"objects[{i}].cell {obj['cell']!r} is not '<{'|'.join(COLUMNS)}> <{'|'.join(ROWS)}>'")
        items.append(f"{name} {cell}")
    held = "nothing" if holding is None else _check_name(holding, "holding")
    seen = " , ".join(items) if items else "nothing"
    return f"see {seen} holding {held} {PERCEPTION_MARKER}"


def _perceived(name: str, cell: str | None) -> dict:
    words = name.split()  # "[size] colour kind": "big blue block", "red cup"
    return {"name": name, "colour": words[-2] if len(words) > 1 else None, "kind": words[-1], "cell": cell}


def parse_perception(text: str) -> dict:
    """Perception text -> ``{"objects": [{"name", "colour", "kind", "cell"}...], "holding": name | None}``.

    ``kind`` is the last word of a name, ``colour`` the one before it (None for one-word names;
    SortBlocks names may start with a size, "big blue block").
    Raises ParseError saying what is wrong."""
    if not isinstance(text, str):
        raise ParseError(f"perception must be text, got {type(text).__name__}")
    words = split_words(text)  # "back," and "nothing." are two words each, as the word tokenizer splits them
    if not words or words[0] != "see":
        raise ParseError(f"perception {text!r} does not start with 'see'")
    if words[-1] != PERCEPTION_MARKER:
        raise ParseError(f"perception {text!r} does not end with {PERCEPTION_MARKER!r}")
    if words.count("holding") != 1:
        raise ParseError(f"perception {text!r} needs exactly one 'holding', has {words.count('holding')}")
    h = words.index("holding")
    seen, held = words[1:h], words[h + 1 : -1]
    if not held:
        raise ParseError(f"perception {text!r} names nothing after 'holding' (say 'nothing')")
    if PERCEPTION_MARKER in held or "," in held or "see" in held:
        raise ParseError(f"perception {text!r}: malformed held object {' '.join(held)!r}")
    holding = None if held == ["nothing"] else " ".join(held)
    if holding is not None and "nothing" in held:
        raise ParseError(f"perception {text!r}: malformed held object {holding!r}")
    objects = []
    if seen != ["nothing"]:
        if not seen:
            raise ParseError(f"perception {text!r} lists no objects after 'see' (say 'nothing')")
        item: list[str] = []
        for w in [*seen, ","]:
            if w != ",":
                item.append(w)
                continue
            if len(item) < 3 or item[-2] not in COLUMNS or item[-1] not in ROWS:
                raise ParseError(f"perception item {' '.join(item)!r} is not '<name> <column> <row>'"
                                 f" (columns {COLUMNS}, rows {ROWS})")
            name = " ".join(item[:-2])
            if any(k in item[:-2] for k in _PERCEPTION_KEYWORDS):
                raise ParseError(f"perception item {' '.join(item)!r} has a keyword inside its name")
            objects.append(_perceived(name, f"{item[-2]} {item[-1]}"))
            item = []
    return {"objects": objects, "holding": holding}


def answer_marker_id(layout: TokenLayout, text_tok: TextTokenizer) -> int:
    """The token id of PERCEPTION_MARKER; ValueError when the format cannot be used with this pair."""
    _check_pair(layout, text_tok)
    if layout.name != "compact":
        raise ValueError(f"the 'perceive' answer format needs the compact (word) layout, not {layout.name!r}")
    missing = [w for w in PERCEPTION_WORDS if text_tok.unknown_words(w)]
    if missing:
        raise ValueError(f"the 'perceive' answer format needs the words {missing} in the text tokenizer's vocabulary"
                         " (build it with model_runtime.prompt.perception_texts())")
    return int(text_tok.encode(PERCEPTION_MARKER)[0])


def split_perception_ids(layout: TokenLayout, text_tok: TextTokenizer, ids: list[int]) -> tuple[list[int], list[int]]:
    """Answer ids of the perceive format -> (perception ids up to and including the marker, the rest)."""
    marker = answer_marker_id(layout, text_tok)
    stop = ids.index(layout.boi) if layout.boi in ids else len(ids)
    if marker not in ids[:stop]:
        raise ParseError(f"no perception marker {PERCEPTION_MARKER!r} before the step (answer format 'perceive')")
    m = ids.index(marker)
    return ids[: m + 1], ids[m + 1 :]


# ---- validation helpers ---------------------------------------------------------------------
def _special_ids(layout: TokenLayout) -> set[int]:
    if layout.name == "compact":
        return set(range(COMPACT_NUM_SPECIALS))
    ids = {layout.pad, layout.bos, layout.eos, layout.img, layout.boi, layout.eoi, layout.eol, layout.eof}
    return ids | set(layout.extra.values())


def _check_pair(layout: TokenLayout, text_tok: TextTokenizer) -> None:
    if layout.name == "compact":
        n = getattr(text_tok, "vocab_size", None)
        if not hasattr(text_tok, "words") or n is None:
            raise ValueError(f"compact layout needs a WordTokenizer, got {type(text_tok).__name__}")
        if layout.visual_offset != COMPACT_NUM_SPECIALS + n:
            raise ValueError(
                f"compact layout has {layout.visual_offset - COMPACT_NUM_SPECIALS} text words but the tokenizer has"
                f" {n}: build the layout with compact(num_text_words={n}, ...)"
            )
    elif layout.name not in ("emu35", "emu3"):
        raise ValueError(f"no prompt format for layout {layout.name!r}; expected 'compact', 'emu35' or 'emu3'")


def _clean_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"{what} is empty")
    return text


def _encode(layout: TokenLayout, text_tok: TextTokenizer, text: str, what: str) -> list[int]:
    """Encode plain text; refuse ids that would be read as structure (specials, visual codes)."""
    ids = [int(i) for i in text_tok.encode(text)]
    specials = _special_ids(layout)
    unk = layout.extra.get("unk")
    for i in ids:
        if i >= layout.visual_offset or (i in specials and i != unk):
            raise ValueError(
                f"{what} {text!r} encodes to id {i}, a special or visual id: special-token text is not allowed"
            )
    return ids


def _frame_block(layout: TokenLayout, codes: np.ndarray, what: str) -> list[int]:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.size == 0:
        raise ValueError(f"{what} must be a non-empty (h, w) code grid, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{what} must hold integer codes, got dtype {codes.dtype}")
    try:
        return layout.serialize_image(codes)
    except LayoutError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def format_question(instruction: str, history: list[str]) -> str:
    """The question text of the emu35/emu3 templates: instruction, then the done steps, numbered."""
    lines = [instruction]
    if history:
        lines.append("Completed steps:")
        lines += [f"{i + 1}. {h}" for i, h in enumerate(history)]
    lines.append("What is the next step?")
    return "\n".join(lines)


# ---- prompts --------------------------------------------------------------------------------
def build_prompt(
    layout: TokenLayout,
    text_tok: TextTokenizer,
    instruction: str,
    history: list[str],
    frame_codes: np.ndarray,
    task: str = "vla",
    system_extra: str = "",
) -> list[int]:
    """The conditional prompt, ending exactly where the assistant's next step text begins."""
    return _prompt(layout, text_tok, instruction, history, frame_codes, task, system_extra, conditional=True)


def build_unconditional_prompt(
    layout: TokenLayout,
    text_tok: TextTokenizer,
    instruction: str,
    history: list[str],
    frame_codes: np.ndarray,
    task: str = "vla",
    system_extra: str = "",
) -> list[int]:
    """CFG's unconditional prompt: same image, question text (instruction, history) dropped.

    emu35: exactly the release's unconditional prompt (no task and no system extra either).

    Takes the same arguments as ``build_prompt`` so callers build both in one place; the
    instruction and history are validated but left out of the ids on purpose.
    """
    return _prompt(layout, text_tok, instruction, history, frame_codes, task, system_extra, conditional=False)


def _prompt(
    layout: TokenLayout,
    text_tok: TextTokenizer,
    instruction: str,
    history: list[str],
    frame_codes: np.ndarray,
    task: str,
    system_extra: str,
    conditional: bool,
) -> list[int]:
    _check_pair(layout, text_tok)
    instruction = _clean_text(instruction, "instruction")
    if not isinstance(history, (list, tuple)):
        raise ValueError(f"history must be a list of step texts, got {type(history).__name__}")
    history = [_clean_text(h, f"history[{i}]") for i, h in enumerate(history)]
    image = _frame_block(layout, frame_codes, "frame_codes")

    if layout.name == "compact":
        if task != "vla":
            raise ValueError(f"the compact layout only knows task 'vla', got {task!r}")
        ids = [layout.bos, layout.extra["user"]]
        if conditional:
            ids += _encode(layout, text_tok, instruction, "instruction")
            for i, h in enumerate(history):
                ids += [layout.extra["history"]] + _encode(layout, text_tok, h, f"history[{i}]")
        return ids + image + [layout.extra["assistant"]]

    question = format_question(instruction, history) if conditional else ""
    if layout.name == "emu35":
        if task not in TASKS:
            raise ValueError(f"unknown Emu3.5 task {task!r}; expected one of {TASKS}")
        if not conditional:
            # The release's own unconditional prompt (image kept, no task, no question):
            # "<|extra_203|>You are a helpful assistant. USER: <|IMAGE|> ASSISTANT: <|extra_100|>"
            return (
                [layout.bos]
                + _encode(layout, text_tok, f"{_EMU3_SYSTEM} USER: ", "template")
                + image
                + _encode(layout, text_tok, " ASSISTANT: ", "template")
                + [layout.extra["assistant_start"]]
            )
        system = _EMU35_SYSTEM.format(task=task, extra=system_extra)
        return (
            [layout.bos]
            + _encode(layout, text_tok, f"{system} USER: {question}", "question")
            + image
            + _encode(layout, text_tok, " ASSISTANT: ", "template")
            + [layout.extra["assistant_start"]]
        )
    # emu3: chat format, image first, then the question.
    return (
        [layout.bos]
        + _encode(layout, text_tok, f"{_EMU3_SYSTEM} USER: ", "template")
        + image
        + _encode(layout, text_tok, f"{question} ASSISTANT: ", "question")
    )


def pad_batch(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts to one length -> (ids (B, T) int64, attention_mask (B, T) int64).

    Left padding keeps every prompt's last token at T-1, so one decode step serves all rows
    (conditional and unconditional CFG branches included); position ids come from the mask.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("pad_batch needs at least one non-empty prompt")
    t = max(len(p) for p in prompts)
    ids = np.full((len(prompts), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), t), dtype=np.int64)
    for r, p in enumerate(prompts):
        ids[r, t - len(p) :] = p
        mask[r, t - len(p) :] = 1
    return ids, mask


# ---- answers --------------------------------------------------------------------------------
def build_answer(
    layout: TokenLayout,
    text_tok: TextTokenizer,
    step_text: str | None,
    subgoal_codes: np.ndarray | None,
    is_final: bool,
    perception: str | None = None,
) -> list[int]:
    """The assistant answer ids: ``step <image> EOS`` or the done marker then EOS; with ``perception``
    (the "perceive" format, ``format_perception``'s text) that text comes first."""
    _check_pair(layout, text_tok)
    if perception is not None:
        return _perception_ids(layout, text_tok, perception) + build_answer(
            layout, text_tok, step_text, subgoal_codes, is_final)
    if is_final:
        if subgoal_codes is not None:
            raise ValueError("a final answer carries no subgoal image (got subgoal_codes)")
        if layout.name == "compact":
            return [layout.extra["done"], layout.eos]
        return _encode(layout, text_tok, DONE_TEXT, "done marker") + [layout.eos]
    step_text = _clean_text(step_text, "step_text")
    if subgoal_codes is None:
        raise ValueError("a step answer needs subgoal_codes (the predicted subgoal image)")
    if layout.name != "compact" and step_text == DONE_TEXT:
        raise ValueError(f"step_text {DONE_TEXT!r} is reserved for the final answer")
    unknown = text_tok.unknown_words(step_text)
    if unknown:
        raise ValueError(f"step_text {step_text!r} has words the text tokenizer does not know: {unknown}")
    return (
        _encode(layout, text_tok, step_text, "step_text")
        + _frame_block(layout, subgoal_codes, "subgoal_codes")
        + [layout.eos]
    )


def _perception_ids(layout: TokenLayout, text_tok: TextTokenizer, perception: str) -> list[int]:
    perception = _clean_text(perception, "perception")
    answer_marker_id(layout, text_tok)  # the format's words are in the vocabulary
    try:
        parse_perception(perception)
    except ParseError as exc:
        raise ValueError(f"malformed perception: {exc}") from None
    unknown = text_tok.unknown_words(perception)
    if unknown:
        raise ValueError(f"perception {perception!r} has words the text tokenizer does not know: {unknown}")
    return _encode(layout, text_tok, perception, "perception")


def answer_opening_ids(layout: TokenLayout, text_tok: TextTokenizer, step_text: str | None) -> list[int] | None:
    """The ids an answer starts with: the step text's, or the final marker's when ``step_text`` is
    None. None when the text has words the tokenizer lacks (the model cannot say it anyway)."""
    _check_pair(layout, text_tok)
    if step_text is None:
        return [layout.extra["done"]] if layout.name == "compact" else _encode(layout, text_tok, DONE_TEXT, "done marker")
    step_text = _clean_text(step_text, "step_text")
    if text_tok.unknown_words(step_text):
        return None
    return _encode(layout, text_tok, step_text, "step_text")


def parse_answer(
    layout: TokenLayout,
    text_tok: TextTokenizer,
    generated_ids: list[int] | np.ndarray,
    require_eos: bool = True,
    expected_grid: tuple[int, int] | None = None,
    answer_format: str = "step",
    text_only: bool = False,
) -> ParsedStep:
    """Generated answer ids (everything after the prompt) -> ParsedStep, or ParseError.

    Trailing PAD ids (right-padded batches) are ignored; ``require_eos=False`` accepts an answer
    cut right before its EOS. ``expected_grid`` checks the subgoal image's (h, w).
    ``answer_format="perceive"``: the answer starts with the perception (``parse_perception``),
    returned in ``ParsedStep.perception``. ``text_only``: ``generated_ids`` is the answer's text cut
    where its image starts (streaming the sentence): no image and no EOS expected, ``codes`` None.
    """
    check_answer_format(answer_format)
    if answer_format == "perceive":
        ids = [int(i) for i in np.asarray(generated_ids, dtype=np.int64).reshape(-1)]
        try:
            head, rest = split_perception_ids(layout, text_tok, ids)
        except ValueError as exc:
            if isinstance(exc, ParseError):
                raise
            raise ParseError(str(exc)) from None
        bad = [i for i in head if i >= layout.visual_offset or i in (_special_ids(layout) - {layout.extra.get("unk", -1)})]
        if bad:
            raise ParseError(f"special or visual id {bad[0]} inside the perception")
        perception = parse_perception(text_tok.decode(head))
        if not rest or rest in ([layout.eos], [layout.pad]):
            raise ParseError("the perception is followed by no step and no done marker")
        parsed = parse_answer(layout, text_tok, rest, require_eos=require_eos, expected_grid=expected_grid,
                              text_only=text_only)
        parsed.perception = perception
        return parsed
    ids = [int(i) for i in np.asarray(generated_ids, dtype=np.int64).reshape(-1)]
    while ids and ids[-1] == layout.pad:
        ids.pop()
    if ids and ids[-1] == layout.eos:
        ids.pop()
    elif require_eos and not text_only:
        raise ParseError(f"answer of {len(ids)} tokens has no EOS at its end (truncated generation?)")
    if layout.eos in ids:
        raise ParseError(f"EOS at position {ids.index(layout.eos)} before the end of the answer")
    if not ids:
        raise ParseError("empty answer")

    codes = None
    text_ids = ids
    n_boi = ids.count(layout.boi)
    if text_only and n_boi:
        raise ParseError("text_only: the answer's text must be cut before its image")
    if n_boi > 1:
        raise ParseError(f"answer has {n_boi} image blocks; a step has exactly one subgoal image")
    if n_boi == 1:
        b = ids.index(layout.boi)
        if layout.eoi not in ids[b:]:
            raise ParseError(f"subgoal image starting at {b} is not closed (no EOI)")
        e = b + ids[b:].index(layout.eoi) + 1
        if e != len(ids):
            raise ParseError(f"{len(ids) - e} tokens after the subgoal image's EOI (expected EOS)")
        try:
            codes = layout.parse_image(ids[b:e])
        except LayoutError as exc:
            raise ParseError(f"malformed subgoal image: {exc}") from exc
        if expected_grid is not None and codes.shape != tuple(expected_grid):
            raise ParseError(f"subgoal image is {codes.shape[0]}x{codes.shape[1]} codes, expected {expected_grid}")
        text_ids = ids[:b]

    if layout.name == "compact" and text_ids[:1] == [layout.extra["done"]]:
        if len(ids) != 1:
            raise ParseError("tokens after <done>: a final answer is '<done> <eos>'")
        return ParsedStep(text=DONE_TEXT, codes=None, is_final=True)
    specials = _special_ids(layout) - {layout.extra.get("unk", -1)}
    for pos, i in enumerate(text_ids):
        if i >= layout.visual_offset:
            raise ParseError(f"visual id {i} at position {pos} in the step text (image without BOI)")
        if i in specials:
            raise ParseError(f"special id {i} at position {pos} in the step text")
    text = text_tok.decode(text_ids).strip() if text_ids else ""
    if layout.name != "compact" and text == DONE_TEXT:
        if codes is not None:
            raise ParseError("the done marker is followed by an image")
        return ParsedStep(text=DONE_TEXT, codes=None, is_final=True)
    if not text:
        raise ParseError("step has no text before its subgoal image")
    if codes is None and not text_only:
        raise ParseError(f"step {text!r} has no subgoal image")
    return ParsedStep(text=text, codes=codes, is_final=False)


# ---- training -------------------------------------------------------------------------------
def build_training_sequence(
    layout: TokenLayout,
    text_tok: TextTokenizer,
    instruction: str,
    history: list[str],
    frame_codes: np.ndarray,
    step_text: str | None,
    subgoal_codes: np.ndarray | None,
    is_final: bool,
    visual_loss_weight: float = 0.5,
    task: str = "vla",
    perception: str | None = None,
) -> TrainingSequence:
    """Prompt + answer with labels, per-token loss weights and image spans (next-token and DiDA stages).
    ``perception``: the "perceive" format's text, put before the step (``build_answer``)."""
    if not visual_loss_weight >= 0.0:
        raise ValueError(f"visual_loss_weight must be >= 0, got {visual_loss_weight}")
    prompt = build_prompt(layout, text_tok, instruction, history, frame_codes, task=task)
    answer = build_answer(layout, text_tok, step_text, subgoal_codes, is_final, perception=perception)
    return _training_sequence(layout, prompt, answer, visual_loss_weight, "step")


def _training_sequence(layout: TokenLayout, prompt: list[int], answer: list[int], visual_loss_weight: float,
                       kind: str) -> TrainingSequence:
    """Labels (the answer only), loss weights (text 1, visual cells ``visual_loss_weight``) and image spans."""
    input_ids = np.asarray(prompt + answer, dtype=np.int64)
    p = len(prompt)
    labels = input_ids.copy()
    labels[:p] = IGNORE_INDEX
    weights = np.zeros(len(input_ids), dtype=np.float32)
    weights[p:] = 1.0
    visual = np.asarray(layout.is_visual(input_ids))
    weights[p:][visual[p:]] = visual_loss_weight
    spans = []
    for s, e in layout.find_images(input_ids):
        h, w = layout.parse_image(input_ids[s:e]).shape
        spans.append(ImageSpan(start=s, end=e, height=h, width=w, is_target=s >= p))
    return TrainingSequence(input_ids=input_ids, labels=labels, loss_weights=weights, image_spans=spans,
                            prompt_length=p, kind=kind)


def build_plan_sequence(
    layout: TokenLayout,
    text_tok: TextTokenizer,
    instruction: str,
    history: list[str],
    frame_codes: np.ndarray,
    remaining_steps: list[str],
    task: str = "vla",
) -> TrainingSequence:
    """Auxiliary text-only example: "PLAN_REQUEST instruction" + done steps + frame -> every step
    still to do, separated by PLAN_SEPARATOR, then EOS.

    One such answer names every object still to be handled, in plan order, so a frame teaches the
    model to read the whole scene, not only the object of the next step (a guidance answer carries
    one name per frame). The guidance runtime never asks for it: the request prefix keeps the two
    tasks apart.
    """
    if not remaining_steps:
        raise ValueError("build_plan_sequence needs at least one remaining step")
    steps = [_clean_text(t, f"remaining_steps[{i}]") for i, t in enumerate(remaining_steps)]
    unknown = sorted({w for t in steps for w in text_tok.unknown_words(t)})
    if unknown:
        raise ValueError(f"remaining_steps have words the text tokenizer does not know: {unknown}")
    prompt = build_prompt(layout, text_tok, f"{PLAN_REQUEST} {_clean_text(instruction, 'instruction')}", history,
                          frame_codes, task=task)
    answer = _encode(layout, text_tok, f" {PLAN_SEPARATOR} ".join(steps), "remaining_steps") + [layout.eos]
    return _training_sequence(layout, prompt, answer, 1.0, "plan")  # a text-only answer: no visual cells
