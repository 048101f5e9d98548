"""The default backend: our model directory (Qwen3 LM + vision tokenizer + text tokenizer) in PyTorch.

A model directory holds everything one guidance model needs::

    guidance.json         {"format_version": 1, "layout": "compact", "layout_kwargs": {...},
                           "image_size": [96, 96], "task": "vla"}
    lm/                   a Qwen3-compatible checkpoint (config.json + safetensors, sharded or not)
    vision_tokenizer/     anything model_runtime.tokenizers.load_vision_tokenizer reads (FSQ, Emu3 VQ, IBQ)
    text_tokenizer/       anything model_runtime.text_tokenizer.load_text_tokenizer reads (words, HF)
    step_verifier/        optional: model_runtime.step_verifier (did a step happen between two frames?)
    perception/           optional: model_runtime.scene_perceiver (what is on the table, where, what is held)

``save_model_dir`` writes one (the training pipeline calls it); ``TorchBackend`` loads one, checks
that the parts agree with each other and with the layout, and answers ``next_step`` with
``model_runtime.decoding.generate_answer``. ``LocalModelBackend`` (the step logic) is shared with the
Emu3 backend.

DiDA-adapted or not: ``guidance.json`` records ``"dida_adapted"`` (the training pipeline's dida
stage sets it); a bare checkpoint (the Emu3.5 release, an Emu3 conversion) is DiDA-adapted only
if it holds ``dida_adapted.json`` (written when our dida stage adapts one). Weights that were not
adapted decode images AR by default, and an explicit DiDA request is refused with the reason
unless ``DecodeOptions(force_dida=True)``. Model directories written before the field existed
(format 1 without it, like the shipped default model, which went through the dida stage) keep
DiDA as their default.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emu_guide.types import DecodeMode, Frame, PlanStep, validate_rgb_image
from model_runtime.backends.base import OFFICIAL_DECODE_DEFAULTS, BackendError, DecodeOptions, Perceived, StepCheck
from model_runtime.decoding.constraints import DecodeConstraint, Phase
from model_runtime.layout import COMPACT_NUM_SPECIALS, TokenLayout, get_layout
from model_runtime.scene_perceiver import PERCEIVER_DIR
from model_runtime.step_verifier import VERIFIER_DIR

__all__ = [
    "DIDA_MARKER",
    "GUIDANCE_FILE",
    "LocalModelBackend",
    "TorchBackend",
    "dida_marker",
    "find_vision_tokenizer",
    "load_model_dir",
    "save_model_dir",
    "write_dida_marker",
]

GUIDANCE_FILE = "guidance.json"
FORMAT_VERSION = 1
DIDA_MARKER = "dida_adapted.json"  # in a bare checkpoint directory: its weights were DiDA-adapted
# Where the Emu3.5 release's vision tokenizer (config.yaml + model.ckpt) sits relative to the LM:
# inside it, or beside it as downloaded (weights/Emu3.5 and weights/Emu3.5-VisionTokenizer).
VISION_TOKENIZER_PLACES = ("vision_tokenizer", "../Emu3.5-VisionTokenizer")


def dida_marker(checkpoint_dir: str | Path) -> bool:
    """Whether a bare checkpoint directory holds ``dida_adapted.json`` saying its weights were adapted."""
    f = Path(checkpoint_dir) / DIDA_MARKER
    if not f.is_file():
        return False
    try:
        doc = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BackendError(f"{f}: unreadable DiDA marker ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("dida_adapted"), bool):
        raise BackendError(f"{f}: expected {{\"dida_adapted\": true|false, ...}}")
    return doc["dida_adapted"]


def write_dida_marker(checkpoint_dir: str | Path, **info: Any) -> Path:
    """Mark a checkpoint directory (or a model directory) as DiDA-adapted; ``info``: how (steps, noise...)."""
    path = Path(checkpoint_dir)
    gfile = path / GUIDANCE_FILE
    if gfile.is_file():  # our model directory: the field of guidance.json
        doc = json.loads(gfile.read_text())
        doc["dida_adapted"] = True
        gfile.write_text(json.dumps(doc, indent=2) + "\n")
        return gfile
    (path / DIDA_MARKER).write_text(json.dumps({"dida_adapted": True, **info}, indent=2) + "\n")
    return path / DIDA_MARKER


def find_vision_tokenizer(lm_dir: Path, given: str | Path | None) -> Path:
    """The vision tokenizer directory: ``given``, else inside or beside the LM (``VISION_TOKENIZER_PLACES``)."""
    if given is not None:
        return Path(given)
    places = [(lm_dir / p).resolve() for p in VISION_TOKENIZER_PLACES]
    for place in places:
        if place.is_dir():
            return place
    raise BackendError(
        f"no vision tokenizer found for {lm_dir}: looked in {', '.join(map(str, places))}; pass"
        " vision_tokenizer_path=<dir> (the Emu3.5 release's Emu3.5-VisionTokenizer: config.yaml + model.ckpt)"
    )


def _layout_doc(layout: TokenLayout) -> dict[str, Any]:
    if layout.name == "compact":
        return {
            "layout": "compact",
            "layout_kwargs": {
                "num_text_words": layout.visual_offset - COMPACT_NUM_SPECIALS,
                "num_visual_codes": layout.num_visual_codes,
            },
        }
    return {"layout": layout.name, "layout_kwargs": {}}


def _is_history_limit(value: Any) -> bool:
    """guidance.json "max_history": an integer >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def save_model_dir(
    path: str | Path,
    lm: torch.nn.Module,
    vision_tokenizer: Any,
    text_tokenizer: Any,
    layout: TokenLayout,
    lm_config: Any = None,
    task: str = "vla",
    dida_adapted: bool | None = None,
    answer_format: str = "step",
    max_history: int | None = None,
    step_verifier: str | Path | None = None,
    perceiver: str | Path | None = None,
) -> Path:
    """Write a model directory TorchBackend loads (lm/, vision_tokenizer/, text_tokenizer/, guidance.json).

    ``dida_adapted``: recorded in guidance.json (True after the dida stage, False for a next-token
    model); None leaves it out (read as a directory from before the field: DiDA allowed).
    ``answer_format``: "perceive" is recorded as ``"answer": "perceive"`` (answers start with what
    the model sees, model_runtime.prompt); the plain "step" format is the default and left out.
    ``max_history``: the most recent done steps the model was trained to see in its prompt (the
    training data's ``data.max_history``); the backend keeps only those. None: all of them.
    ``step_verifier``: a trained step verifier's directory (``model_runtime.step_verifier``), copied
    in as ``step_verifier/``: the backend's ``check_step`` then answers (the loop's frame verification).
    ``perceiver``: a trained scene perceiver's directory (``model_runtime.scene_perceiver``), copied in
    as ``perception/``: the backend then perceives every frame with it and plans from that perception."""
    from model_runtime.prompt import check_answer_format

    check_answer_format(answer_format)
    from model_runtime.lm import save_lm

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    size = vision_tokenizer.image_size
    if size is None:
        raise ValueError("the vision tokenizer has no fixed image size; the model directory needs one")
    if vision_tokenizer.num_codes != layout.num_visual_codes:
        raise ValueError(
            f"vision tokenizer has {vision_tokenizer.num_codes} codes, layout {layout.name!r} {layout.num_visual_codes}"
        )
    save_lm(lm, path / "lm", lm_config)
    vision_tokenizer.save(path / "vision_tokenizer")
    text_tokenizer.save(path / "text_tokenizer")
    doc = {"format_version": FORMAT_VERSION, **_layout_doc(layout), "image_size": list(size), "task": task}
    if dida_adapted is not None:
        doc["dida_adapted"] = bool(dida_adapted)
    if answer_format != "step":
        doc["answer"] = answer_format
    if max_history is not None:
        if not _is_history_limit(max_history):
            raise ValueError(f"max_history must be an integer >= 0, got {max_history!r}")
        doc["max_history"] = max_history
    if step_verifier is not None:
        from model_runtime.step_verifier import StepVerifier

        StepVerifier.load(step_verifier).save(path / VERIFIER_DIR)  # ValueError: not a step verifier
    if perceiver is not None:
        from model_runtime.scene_perceiver import ScenePerceiver

        ScenePerceiver.load(perceiver).save(path / PERCEIVER_DIR)  # ValueError: not a scene perceiver
    (path / GUIDANCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return path


class LocalModelBackend:
    """Step logic shared by local backends: frame -> codes -> prompt -> decode -> PlanStep.

    Subclasses set ``lm``, ``layout``, ``vision``, ``text``, ``image_size``, ``task``.
    """

    name = "local"
    model_id = ""
    lm: torch.nn.Module
    layout: TokenLayout
    vision: Any  # model_runtime.tokenizers.VisionTokenizer
    text: Any  # model_runtime.text_tokenizer.TextTokenizer
    image_size: tuple[int, int]
    task: str = "vla"
    last_answer: Any = None  # the last model_runtime.decoding.Answer (forward counts, per-phase timings)
    # True: DiDA-adapted weights; False: next-token weights only (AR default, DiDA refused unless
    # forced); None: not recorded (a model directory from before the field): DiDA allowed.
    dida_adapted: bool | None = None
    # The model's own defaults for DecodeOptions fields the caller leaves unset (sampling per token
    # kind, guidance); ``mode`` is added from ``dida_adapted``.
    sampling_defaults: dict[str, Any] = {}
    # guidance.json "answer": "step" (step + subgoal image) or "perceive" (what the model sees first;
    # PlanStep.perception carries it)
    answer_format: str = "step"
    # guidance.json "max_history": the prompt keeps the most recent this many done steps, as in
    # training (None: every done step; the step's index still counts them all)
    max_history: int | None = None
    # step_verifier/ of a model directory (model_runtime.step_verifier.StepVerifier): judges whether a
    # step happened between two frames (``check_step``); None: the model has none
    verifier: Any = None
    # perception/ of a model directory (model_runtime.scene_perceiver.ScenePerceiver): what the frame
    # shows; ``next_step`` plans from it (``perceive`` answers with it); None: the model has none
    perceiver: Any = None

    @property
    def perceives(self) -> bool:
        """Whether ``perceive`` answers: a scene perceiver, or answers in the "perceive" format."""
        return self.perceiver is not None or self.answer_format == "perceive"

    @property
    def perceived_names(self) -> tuple[str, ...]:
        """Every object name the scene perceiver can report (empty without one)."""
        return tuple(self.perceiver.cfg.names) if self.perceiver is not None else ()

    @property
    def checks(self) -> bool:
        """Whether ``check_step`` answers (the model directory has a step verifier)."""
        return self.verifier is not None

    @property
    def default_mode(self) -> DecodeMode:
        """DiDA for DiDA-adapted (or unrecorded) weights, AR for next-token-only weights."""
        return DecodeMode.AR if self.dida_adapted is False else DecodeMode.DIDA

    def decode_defaults(self) -> dict[str, Any]:
        """Every default this model applies to unset DecodeOptions fields."""
        return {**self.sampling_defaults, "mode": self.default_mode}

    # ---- inputs -------------------------------------------------------------------------------
    def history_texts(self, history: list[PlanStep]) -> list[str]:
        """The done steps the prompt shows: the most recent ``max_history`` (all when None)."""
        texts = [h.text for h in history]
        if self.max_history is None:
            return texts
        return texts[-self.max_history:] if self.max_history else []

    def prepare_frame(self, frame: Frame) -> np.ndarray:
        """Validate the frame and resize it to ``image_size`` (an explicit, documented resize)."""
        from model_runtime.tokenizers.base import resize_image

        if not isinstance(frame, Frame):
            raise BackendError(f"{self.name}: expected an emu_guide.types.Frame, got {type(frame).__name__}")
        try:
            image = validate_rgb_image(frame.image, "frame.image")
        except ValueError as exc:
            raise BackendError(f"{self.name}: malformed frame: {exc}") from None
        return resize_image(image, self.image_size)

    def check_instruction(self, instruction: str) -> None:
        """BackendError when the instruction is empty or has words the text tokenizer cannot encode."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise BackendError(f"{self.name}: the instruction is empty")
        unknown = self.text.unknown_words(instruction)
        if unknown:
            raise BackendError(
                f"{self.name}: the instruction {instruction!r} has words the model's vocabulary does not know:"
                f" {unknown} (model {self.model_id})"
            )

    def _options(self, options: DecodeOptions | None) -> DecodeOptions:
        options = options or DecodeOptions()
        if not isinstance(options, DecodeOptions):
            raise BackendError(f"{self.name}: options must be DecodeOptions, got {type(options).__name__}")
        if options.mode is DecodeMode.ORACLE:
            raise BackendError(f"{self.name}: decode mode 'oracle' needs the oracle backend, not a model")
        explicit_dida = options.mode is DecodeMode.DIDA and "mode" not in options.unset
        options = options.with_defaults(self.decode_defaults())
        if explicit_dida and self.dida_adapted is False and not options.force_dida:
            raise BackendError(
                f"{self.name}: DiDA asked for, but {self.model_id} holds next-token weights that were never"
                " DiDA-adapted (the released Emu3.5/Emu3 weights are autoregressive only), so parallel decoding"
                " gives poor images; use mode='ar' (this model's default), adapt it first (the dida training"
                " stage), or pass DecodeOptions(force_dida=True) to run it anyway"
            )
        return options

    def banned_openings(self, options: DecodeOptions) -> list[list[int]]:
        """Token ids of the answers the caller rejected (``avoid_texts``, ``avoid_final``) for the decoder to ban."""
        from model_runtime.prompt import answer_opening_ids

        avoid = [*options.avoid_texts, *([None] if options.avoid_final else [])]
        return [ids for ids in (answer_opening_ids(self.layout, self.text, t) for t in avoid) if ids]

    def mention_ids(self, options: DecodeOptions) -> tuple[list[list[int]], list[list[int]]] | None:
        """Token ids of ``known_names`` and ``allowed_names`` as they appear inside a sentence, or None (off).

        A name is encoded after "the" and the ids of "the" removed, so subword tokenizers give the
        mid-sentence form (a leading space). Names with words the vocabulary lacks are left out:
        the model cannot say them anyway.
        """
        if not options.known_names:
            return None
        return [self._name_ids(n) for n in options.known_names], [self._name_ids(n) for n in options.allowed_names]

    def _name_ids(self, name: str) -> list[int]:
        name = " ".join(name.lower().split())
        if self.text.unknown_words(name):
            return []
        head = self.text.encode("the")
        ids = self.text.encode(f"the {name}")
        return ids[len(head) :] if ids[: len(head)] == head else self.text.encode(name)

    # ---- the step -----------------------------------------------------------------------------
    def _prompt(self, frame: Frame, instruction: str, history: list[PlanStep], options: DecodeOptions,
                answer_runs: int) -> tuple[list[int], list[int] | None, tuple[int, int], dict[str, float]]:
        """(prompt ids, unconditional prompt ids or None, code grid, timings) for an answer about ``frame``.

        ``answer_runs``: text runs the answer may still decode (the context check counts them)."""
        from model_runtime.prompt import build_prompt, build_unconditional_prompt

        self.check_instruction(instruction)
        if not all(isinstance(h, PlanStep) for h in history):
            raise BackendError(f"{self.name}: history must be a list of PlanStep")
        done_texts = self.history_texts(history)
        t0 = time.perf_counter()
        image = self.prepare_frame(frame)
        codes = self.vision.encode_one(image)  # (h, w)
        encode_ms = 1e3 * (time.perf_counter() - t0)
        try:
            prompt = build_prompt(self.layout, self.text, instruction, done_texts, codes, task=self.task)
            uncond = None
            if options.guidance_scale != 1.0:
                uncond = build_unconditional_prompt(self.layout, self.text, instruction, done_texts, codes, task=self.task)
        except ValueError as exc:
            raise BackendError(f"{self.name}: cannot build the prompt: {exc}") from None
        config = getattr(self.lm, "config", None)
        limit = getattr(config.get_text_config(), "max_position_embeddings", None) if config is not None else None
        grid = tuple(codes.shape)
        needed = len(prompt) + answer_runs * options.max_text_tokens + self.layout.image_block(*grid).length + 1
        if limit is not None and needed > limit:
            raise BackendError(
                f"{self.name}: prompt of {len(prompt)} tokens plus the answer ({needed} in all) exceeds the model's"
                f" context of {limit} positions (history of {len(history)} steps too long?)"
            )
        return prompt, uncond, grid, {"encode_frame": encode_ms}

    def _perception_prefix(self, perception: str) -> list[int]:
        """Token ids of a given perception text (``DecodeOptions.perception``) for a "perceive"-format
        LM; BackendError when it does not parse or has words the model cannot say."""
        from model_runtime.prompt import ParseError, parse_perception

        try:
            parse_perception(perception)
        except ParseError as exc:
            raise BackendError(f"{self.name}: the given perception does not parse: {exc}") from None
        unknown = self.text.unknown_words(perception)
        if unknown:
            raise BackendError(f"{self.name}: the given perception has words the model's vocabulary lacks: {unknown}")
        return list(self.text.encode(perception))

    def perceive(
        self, frame: Frame, instruction: str, history: list[PlanStep], options: DecodeOptions | None = None
    ) -> Perceived:
        """What the model sees in ``frame``: the answer decoded up to the perception marker, then stopped.

        The prompt is ``next_step``'s for the same arguments, so ``Perceived.text`` given back as
        ``DecodeOptions.perception`` makes ``next_step`` continue exactly where this stopped (greedy
        text: the same tokens as one undivided answer). Costs one prompt prefill plus one forward
        per perception token. BackendError for a model without the "perceive" format; a perception
        that does not parse comes back with ``perception=None`` and ``error`` (the caller decides)."""
        from model_runtime.decoding import answer_grammar
        from model_runtime.decoding.ar import decode_text
        from model_runtime.decoding.cache import ForwardCounter, KVState
        from model_runtime.decoding.sampling import make_generator
        from model_runtime.prompt import ParseError, parse_perception

        if self.perceiver is not None:
            self.check_instruction(instruction)
            return self._perceive_frame(frame)
        if self.answer_format != "perceive":
            raise BackendError(f"{self.name}: {self.model_id} answers in the {self.answer_format!r} format"
                               " and has no scene perceiver: it cannot say what it sees")
        options = self._options(options)
        t0 = time.perf_counter()
        prompt, _, grid, timings = self._prompt(frame, instruction, history, options, answer_runs=1)
        grammar = answer_grammar(self.layout, self.answer_format, self.text)
        cons = _UntilStepMarker(self.layout, grid, max_text_tokens=options.max_text_tokens,
                                forbid_in_text=grammar["forbid_in_text"], final_ids=grammar["final_ids"],
                                text_before_image=grammar["text_before_image"], step_marker=grammar["step_marker"],
                                perception_grammar=grammar["perception_grammar"])
        with torch.inference_mode():
            runner = ForwardCounter(self.lm)
            t1 = time.perf_counter()
            state, logits = KVState.prefill(runner, prompt)  # the prompt, once
            t2 = time.perf_counter()
            runner.phase = "text"  # the perception, one forward per sampled token, up to the marker
            decode_text(state, logits, cons, options.text_temperature, options.text_top_k, options.text_top_p,
                        make_generator(options.seed, runner.device))
            t3 = time.perf_counter()
        text = self.text.decode(cons.tokens).strip()
        timings.update(prefill=1e3 * (t2 - t1), text=1e3 * (t3 - t2), total=1e3 * (t3 - t0),
                       tokens=float(len(cons.tokens)), forwards=float(sum(runner.counts.values())))
        try:
            return Perceived(text=text, perception=parse_perception(text), timings_ms=timings)
        except ParseError as exc:
            return Perceived(text=text, perception=None, error=str(exc), timings_ms=timings)

    def _perceive_frame(self, frame: Frame) -> Perceived:
        """The scene perceiver's view of ``frame`` as a ``Perceived`` (its text is the perception format)."""
        from model_runtime.prompt import format_perception, parse_perception

        seen, ms = self.perceiver.perceive(self.prepare_frame(frame))
        text = format_perception(seen["objects"], seen["holding"])
        perception = {**parse_perception(text), "held_candidates": seen["held_candidates"],  # the text drops the
                      "other_names": {o["name"]: o["other_names"] for o in seen["objects"]}}  # probabilities
        return Perceived(text=text, perception=perception, timings_ms={"perceiver": ms, "total": ms})

    def _plan_from(self, perception: str, options: DecodeOptions) -> tuple[list[int], DecodeOptions, dict | None]:
        """(answer prefix ids, options, parsed perception) for a step planned from ``perception``.

        A "perceive"-format LM gets the text as its answer's start (teacher-forced). A plain-format
        LM with a scene perceiver may name only what was perceived (on the table or held), as
        grounded decoding does with a detector's names, unless the caller grounds it already."""
        from model_runtime.prompt import ParseError, parse_perception

        if self.answer_format == "perceive":
            prefix = self._perception_prefix(perception)
            return prefix, options, None
        if self.perceiver is None:
            raise BackendError(f"{self.name}: a perception was given but {self.model_id} answers in the"
                               f" {self.answer_format!r} format and has no scene perceiver")
        try:
            seen = parse_perception(perception)
        except ParseError as exc:
            raise BackendError(f"{self.name}: the given perception does not parse: {exc}") from None
        if not options.known_names:
            names = [o["name"] for o in seen["objects"]] + ([seen["holding"]] if seen["holding"] else [])
            options = dataclasses.replace(options, known_names=self.perceived_names,
                                          allowed_names=tuple(dict.fromkeys(names)))
        return [], options, seen

    def check_step(self, before: Frame, after: Frame, step_text: str) -> StepCheck:
        """How likely ``step_text`` happened between ``before`` (the frame the step was planned on) and
        ``after`` (the frame after it was executed), by the model's step verifier
        (model_runtime/step_verifier.py). BackendError for a model directory without one."""
        if self.verifier is None:
            raise BackendError(f"{self.name}: {self.model_id} has no step verifier ({VERIFIER_DIR}/ in its model"
                               " directory): it cannot judge from frames whether a step happened")
        p, ms = self.verifier.p_happened(before.image, after.image, step_text)
        return StepCheck(step_text, p, ms, self.verifier.cfg.threshold, self.verifier.unknown_words(step_text))

    def _stream_text(self, ids: list[int], prefix: list[int], index: int, options: DecodeOptions, t0: float) -> None:
        """``options.on_text`` with the step as decoded so far (its text; the image is next)."""
        from model_runtime.prompt import ParseError, parse_answer

        try:  # parsed as the full answer will be, without its image
            parsed = parse_answer(self.layout, self.text, prefix + ids, answer_format=self.answer_format, text_only=True)
        except ParseError:
            return  # nothing to stream; the complete step follows
        options.on_text(PlanStep(index=index, text=parsed.text, decode_mode=options.mode, perception=parsed.perception,
                                 timings_ms={"text_ready": 1e3 * (time.perf_counter() - t0)}))  # fmt: skip

    def next_step(
        self, frame: Frame, instruction: str, history: list[PlanStep], options: DecodeOptions | None = None
    ) -> PlanStep:
        """The next step for ``frame``. ``options.perception`` ("perceive" models): that text is the
        answer's start (teacher-forced: it joins the prompt's prefill) and the model decodes only
        the step after it."""
        from model_runtime.decoding import answer_grammar, generate_answer
        from model_runtime.prompt import ParseError, answer_marker_id, parse_answer

        options = self._options(options)
        t0 = time.perf_counter()
        perception, own = options.perception, None
        if perception is None and self.perceiver is not None:  # the model perceives the frame first
            own = self._perceive_frame(frame)
            perception = own.text
        prefix, seen = [], None
        if perception is not None:
            prefix, options, seen = self._plan_from(perception, options)
        runs = 2 if self.answer_format == "perceive" and not prefix else 1  # perception, then the step: a text run each
        prompt, uncond, grid, timings = self._prompt(frame, instruction, history, options, answer_runs=runs)
        grammar = answer_grammar(self.layout, self.answer_format, self.text)
        if prefix:  # the perception is given: the step grammar after the marker (no second perception)
            grammar = answer_grammar(self.layout)
            grammar["forbid_in_text"] = [*grammar["forbid_in_text"], answer_marker_id(self.layout, self.text),
                                         *answer_grammar(self.layout, "perceive", self.text)["perception_only"]]
        on_text = None
        if options.on_text is not None:
            on_text = lambda ids: self._stream_text(ids, prefix, len(history), options, t0)  # noqa: E731
        answer = generate_answer(self.lm, prompt + prefix, self.layout, grid, options, uncond_prompt_ids=uncond,
                                 text_id_limit=None if self.layout.name == "compact" else self.text.vocab_size,
                                 banned=self.banned_openings(options), mentions=self.mention_ids(options),
                                 on_text=on_text, **grammar)  # fmt: skip
        if prefix:
            answer = dataclasses.replace(answer, tokens=prefix + answer.tokens)
        self.last_answer = answer
        try:
            parsed = parse_answer(self.layout, self.text, answer.tokens, expected_grid=grid,
                                  answer_format=self.answer_format)
        except ParseError as exc:
            raise BackendError(f"{self.name}: the model's answer does not parse: {exc}") from None
        t_dec = time.perf_counter()
        subgoal = None if parsed.codes is None else self.vision.decode_one(parsed.codes)
        t_end = time.perf_counter()
        timings.update(answer.timings_ms)
        timings.update(decode_image=1e3 * (t_end - t_dec), total=1e3 * (t_end - t0))
        if prefix:
            timings["perception_given"] = float(len(prefix))  # tokens teacher-forced, not decoded
        if own is not None:
            timings["perceive"] = own.timings_ms["perceiver"]
        return PlanStep(
            index=len(history),
            text=parsed.text,
            subgoal_image=subgoal,
            subgoal_tokens=parsed.codes,
            text_confidence=answer.text_confidence,
            image_confidence=answer.image_confidence,
            decode_mode=options.mode,
            timings_ms=timings,
            is_final=parsed.is_final,
            perception=own.perception if own is not None else (parsed.perception if seen is None else seen),
        )

    def close(self) -> None:
        self.lm = None  # type: ignore[assignment]
        self.vision = None


class _UntilStepMarker(DecodeConstraint):
    """The "perceive" answer grammar, ended right after the perception's marker (``perceive``): the
    answer is then DONE, so ``decode_text`` stops there instead of going on into the step."""

    def advance(self, token: int) -> None:
        super().advance(token)
        if self.step_marker is not None and not self.in_perception:
            self.phase = Phase.DONE


def load_model_dir(
    path: str | Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
) -> dict[str, Any]:
    """Read and cross-check a model directory -> dict(lm, layout, vision, text, image_size, task, dida_adapted).

    Every problem is a BackendError naming the file: missing parts, corrupt weights, a tokenizer
    or LM that does not fit the layout.
    """
    path = Path(path)
    if not path.is_dir():
        raise BackendError(f"model directory {path} does not exist")
    gfile = path / GUIDANCE_FILE
    if not gfile.is_file():
        raise BackendError(f"{gfile}: missing (a model directory needs {GUIDANCE_FILE}, lm/, vision_tokenizer/, text_tokenizer/)")
    try:
        doc = json.loads(gfile.read_text())
        layout = get_layout(doc["layout"], **doc.get("layout_kwargs", {}))
        image_size = (int(doc["image_size"][0]), int(doc["image_size"][1]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise BackendError(f"{gfile}: invalid ({type(exc).__name__}: {exc})") from None
    if doc.get("format_version") != FORMAT_VERSION:
        raise BackendError(f"{gfile}: format_version {doc.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    adapted = doc.get("dida_adapted")
    if adapted is not None and not isinstance(adapted, bool):
        raise BackendError(f"{gfile}: dida_adapted must be true or false, got {adapted!r}")
    parts = load_parts(
        layout, path / "lm", path / "text_tokenizer", path / "vision_tokenizer", image_size,
        device=device, dtype=dtype, attn_implementation=attn_implementation, source=str(gfile),
        trust_remote_code=trust_remote_code, device_map=device_map,
    )  # fmt: skip
    parts["task"] = doc.get("task", "vla")
    parts["dida_adapted"] = adapted
    answer_format = doc.get("answer", "step")
    if answer_format not in ("step", "perceive"):
        raise BackendError(f"{gfile}: answer must be 'step' or 'perceive', got {answer_format!r}")
    if answer_format == "perceive":
        from model_runtime.prompt import answer_marker_id

        try:
            answer_marker_id(layout, parts["text"])
        except ValueError as exc:
            raise BackendError(f"{gfile}: {exc}") from None
    parts["answer_format"] = answer_format
    max_history = doc.get("max_history")
    if max_history is not None and not _is_history_limit(max_history):
        raise BackendError(f"{gfile}: max_history must be an integer >= 0, got {max_history!r}")
    parts["max_history"] = max_history
    from model_runtime.scene_perceiver import ScenePerceiver
    from model_runtime.step_verifier import StepVerifier

    # the small networks beside the LM, each optional (model_runtime/net_dir.py format)
    for key, sub, net in (("verifier", VERIFIER_DIR, StepVerifier), ("perceiver", PERCEIVER_DIR, ScenePerceiver)):
        try:
            parts[key] = net.load(path / sub) if (path / sub).exists() else None
        except ValueError as exc:
            raise BackendError(str(exc)) from None
    return parts


def load_parts(
    layout: TokenLayout,
    lm_dir: str | Path,
    text_dir: str | Path,
    vision_dir: str | Path,
    image_size: tuple[int, int] | None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    source: str = "",
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
) -> dict[str, Any]:
    """Load LM, text and vision tokenizers from their directories and check them against ``layout``.

    ``image_size=None`` takes the vision tokenizer's own fixed size. ``trust_remote_code``: allow a
    text tokenizer shipped as code (the Emu3.5 release's). BackendError naming the file.
    """
    from model_runtime.lm import LMLoadError, load_lm
    from model_runtime.text_tokenizer import TextTokenizerError, load_text_tokenizer
    from model_runtime.tokenizers import load_vision_tokenizer
    from model_runtime.tokenizers.base import VisionTokenizerError

    text_dir, vision_dir = Path(text_dir), Path(vision_dir)
    source = source or "the layout"
    try:
        text = load_text_tokenizer(text_dir, trust_remote_code=trust_remote_code)
    except TextTokenizerError as exc:
        hint = ""
        if layout.name == "emu35" and "holds no text tokenizer" in str(exc):
            hint = (" (the Emu3.5 release keeps its tokenizer in its code repository, src/tokenizer_emu3_ibq:"
                    " pass text_tokenizer_path=<that dir>)")  # fmt: skip
        raise BackendError(f"{text_dir}: {exc}{hint}") from None
    if layout.name == "compact" and text.vocab_size != layout.visual_offset - COMPACT_NUM_SPECIALS:
        raise BackendError(
            f"{text_dir}: {text.vocab_size} words but {source} declares"
            f" {layout.visual_offset - COMPACT_NUM_SPECIALS} (wrong layout for this checkpoint)"
        )
    if hasattr(text, "check_layout"):
        try:
            text.check_layout(layout)
        except TextTokenizerError as exc:
            raise BackendError(str(exc)) from None
    try:
        vision = load_vision_tokenizer(vision_dir, device="cuda" if device_map not in (None, "cpu") else device)
    except (VisionTokenizerError, OSError) as exc:
        raise BackendError(f"{vision_dir}: {exc}") from None
    if vision.num_codes != layout.num_visual_codes:
        raise BackendError(
            f"{vision_dir}: {vision.num_codes} codes but layout {layout.name!r} has"
            f" {layout.num_visual_codes} (wrong layout for this checkpoint)"
        )
    if image_size is None:
        if vision.image_size is None:
            raise BackendError(f"{vision_dir}: the vision tokenizer has no fixed image size; pass image_size=(h, w)")
        image_size = tuple(vision.image_size)
    if vision.image_size is not None and tuple(vision.image_size) != tuple(image_size):
        raise BackendError(f"{source}: image_size {image_size} but the vision tokenizer expects {vision.image_size}")
    if image_size[0] % vision.downsample or image_size[1] % vision.downsample:
        raise BackendError(f"image_size {image_size} is not a multiple of the vision tokenizer's {vision.downsample}")
    try:
        lm = load_lm(lm_dir, layout, device=device, dtype=dtype, attn_implementation=attn_implementation,
                     device_map=device_map)  # fmt: skip
    except LMLoadError as exc:
        raise BackendError(str(exc)) from None
    return dict(lm=lm, layout=layout, vision=vision, text=text, image_size=tuple(image_size), task="vla")


class TorchBackend(LocalModelBackend):
    """Our model directory in PyTorch (CPU or CUDA). ``model_path=None``: the shipped default model."""

    name = "torch"

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        num_threads: int | None = None,
        layout: str | None = None,
        text_tokenizer_path: str | Path | None = None,
        vision_tokenizer_path: str | Path | None = None,
        image_size: tuple[int, int] | None = None,
        task: str = "vla",
        trust_remote_code: bool = False,
        device_map: str | dict | None = None,
        **unused: Any,
    ) -> None:
        """``model_path``: a model directory (guidance.json, lm/, ...). Or, with ``layout`` ("emu35",
        "emu3"), a bare checkpoint such as the Emu3.5 release (config.json with model_type "Emu3" or
        "qwen3" + safetensors) whose text tokenizer is at ``text_tokenizer_path`` (default: the
        checkpoint itself; the release's is remote code: ``trust_remote_code=True``) and vision
        tokenizer at ``vision_tokenizer_path`` (default: ``<model_path>/vision_tokenizer``, else the
        release's ``Emu3.5-VisionTokenizer`` beside the checkpoint).

        ``dtype=None``: bfloat16 on CUDA, float32 on CPU. ``device_map`` (e.g. "auto"): spread the
        LM over the visible GPUs (accelerate), as the release runs its 34B on two 80 GB GPUs.
        Decoding defaults: ``decode_defaults()`` (the release's sampling for emu35/emu3 layouts;
        AR unless the weights were DiDA-adapted)."""
        from emu_guide.paths import shipped_model_dir

        if unused:
            raise BackendError(f"torch backend: unknown arguments {sorted(unused)}")
        if not isinstance(trust_remote_code, bool):
            raise BackendError(f"torch backend: trust_remote_code must be True or False, got {trust_remote_code!r}")
        if device_map is not None and not torch.cuda.is_available() and device_map != "cpu":
            raise BackendError(f"torch backend: device_map={device_map!r} needs CUDA GPUs; this host has none")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise BackendError(f"torch backend: bad device {device!r} ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("torch backend: device 'cuda' asked for but no CUDA GPU is available")
        if model_path is None:
            model_path = shipped_model_dir()
            if not Path(model_path).is_dir():
                raise BackendError(
                    f"torch backend: the shipped default model {model_path} does not exist yet (it is produced by"
                    " `emu-guide train`); pass model_path=<a model directory>"
                )
        if num_threads is None and str(device).startswith("cpu"):
            # Small models on a CPU are bound by per-op overhead, not FLOPs: a second thread buys
            # little and, on a shared host (a training job, the ROS executor), oversubscription
            # made small-model work 4x (p50) to 47x (p95) slower (docs/tokenizers.md, speed bench).
            num_threads = 1
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        path = Path(model_path)
        load = dict(device=device, dtype=dtype, attn_implementation=attn_implementation,
                    trust_remote_code=trust_remote_code, device_map=device_map)  # fmt: skip
        if layout is None:
            parts = load_model_dir(path, **load)
        else:
            if not path.is_dir():
                raise BackendError(f"model directory {path} does not exist")
            try:
                lay = get_layout(layout)
            except (ValueError, TypeError) as exc:
                raise BackendError(f"torch backend: {exc}") from None
            lm_dir = path / "lm" if (path / "lm" / "config.json").is_file() else path
            vision_dir = find_vision_tokenizer(lm_dir, vision_tokenizer_path)
            parts = load_parts(lay, lm_dir, text_tokenizer_path or path, vision_dir, image_size,
                               source=f"layout {layout!r}", **load)  # fmt: skip
            parts["task"] = task
            parts["dida_adapted"] = dida_marker(lm_dir)
            key = "emu35-x2i" if lay.name == "emu35" and task == "x2i" else lay.name
            self.sampling_defaults = dict(OFFICIAL_DECODE_DEFAULTS.get(key, {}))
        self.lm = parts["lm"]
        self.layout = parts["layout"]
        self.vision = parts["vision"]
        self.text = parts["text"]
        self.image_size = parts["image_size"]
        self.task = parts["task"]
        self.dida_adapted = parts["dida_adapted"]
        self.answer_format = parts.get("answer_format", "step")
        self.max_history = parts.get("max_history")
        self.verifier = parts.get("verifier")
        self.perceiver = parts.get("perceiver")
        self.model_id = str(Path(model_path))
