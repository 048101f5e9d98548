"""One answer from a prompt: text AR, the subgoal image by DiDA (or AR), then text to EOS.

``generate_answer`` is what every local backend calls. It owns the phases and their counters:

  prefill          the prompt, once (KV cached)
  text             one forward per sampled text token (forced tokens ride along)
  uncond_prefill   under guidance only: the unconditional prompt, once per image
  image            DiDA: K block forwards; AR: one forward per cell
  text             after EOI, only if the grammar leaves a choice (else EOS is forced: no forward)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emu_guide.types import DecodeMode
from model_runtime.decoding.ar import decode_image_ar, decode_text
from model_runtime.decoding.cache import ForwardCounter, KVState
from model_runtime.decoding.constraints import DecodeConstraint, PerceptionGrammar, Phase
from model_runtime.decoding.dida import decode_image_dida
from model_runtime.decoding.sampling import make_generator
from model_runtime.layout import TokenLayout

__all__ = ["Answer", "answer_grammar", "generate_answer"]


def answer_grammar(layout: TokenLayout, answer_format: str = "step", text_tok=None) -> dict:
    """``generate_answer`` keyword arguments for the answer format of ``model_runtime.prompt``.

    ``answer_format="perceive"`` (compact layout; needs ``text_tok`` for the marker's id): the
    perception comes first and ends with ``PERCEPTION_MARKER``; the step grammar below follows it.

    compact: ``words <image> EOS`` or ``<done> EOS``: every special but EOS, BOI and <done> is
    banned from text, EOS is illegal until the image is out (or right after <done>, where it is
    forced). emu35/emu3: ``text <image> EOS`` or ``Task complete. EOS``: the template specials are
    banned from text. In both, EOS is forced right after EOI and an image needs text before it.
    """
    from model_runtime.layout import COMPACT_NUM_SPECIALS
    from model_runtime.prompt import PERCEPTION_ONLY_WORDS, answer_marker_id, check_answer_format

    if check_answer_format(answer_format) == "perceive":
        if text_tok is None:
            raise ValueError("answer format 'perceive' needs the text tokenizer (for the marker's id)")
        only = [int(text_tok.encode(w)[0]) for w in PERCEPTION_ONLY_WORDS]
        return {**answer_grammar(layout), "step_marker": answer_marker_id(layout, text_tok), "perception_only": only,
                "perception_grammar": _perception_grammar(text_tok)}
    if layout.name == "compact":
        keep = {layout.eos, layout.boi, layout.extra["done"]}
        return dict(
            forbid_in_text=[i for i in range(COMPACT_NUM_SPECIALS) if i not in keep],
            final_ids=[layout.extra["done"]],
            min_images=1,
            end_after_image=True,
            text_before_image=True,
        )
    return dict(forbid_in_text=sorted(layout.extra.values()), end_after_image=True, text_before_image=True)


@dataclass
class Answer:
    tokens: list[int]  # generated ids after the prompt, EOS included
    image_codes: np.ndarray | None  # (h, w) visual codes of the (first) image, None if no image
    text_confidence: float  # mean max-probability of sampled text tokens (1.0 if none sampled)
    image_confidence: float  # mean max-probability of image cells when committed
    forwards: dict[str, int] = field(default_factory=dict)  # sequential forward passes per phase
    timings_ms: dict[str, float] = field(default_factory=dict)  # "prefill", "text", "image", "total"


def _perception_grammar(text_tok) -> PerceptionGrammar:
    """The perception's word grammar with this tokenizer's ids (``model_runtime.prompt``'s words)."""
    from model_runtime.prompt import COLUMNS, PERCEPTION_MARKER, ROWS

    def one(word: str) -> int:
        return int(text_tok.encode(word)[0])

    return PerceptionGrammar(see=one("see"), holding=one("holding"), nothing=one("nothing"), comma=one(","),
                             marker=one(PERCEPTION_MARKER), columns=[one(c) for c in COLUMNS], rows=[one(r) for r in ROWS])


def _final_prob(logits: torch.Tensor, cons: DecodeConstraint, final_ids: Sequence[int]) -> float | None:
    """P(final marker) at the answer's first position, or None when there is no (allowed) one."""
    allowed = [int(f) for f in final_ids if cons.is_allowed(int(f))]
    if not allowed:
        return None
    return float(torch.softmax(logits[0].float(), dim=-1)[allowed].sum())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate_answer(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    layout: TokenLayout,
    grid: tuple[int, int],
    options,  # model_runtime.backends.base.DecodeOptions (imported lazily by callers)
    uncond_prompt_ids: Sequence[int] | None = None,
    end_after_image: bool = False,
    max_images: int = 1,
    min_images: int = 0,
    forbid_in_text: Sequence[int] = (),
    final_ids: Sequence[int] = (),
    text_before_image: bool = False,
    text_id_limit: int | None = None,
    confidence_noise: float = 2.0,
    banned: Sequence[Sequence[int]] = (),
    mentions: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]] | None = None,
    step_marker: int | None = None,
    perception_only: Sequence[int] = (),
    perception_grammar: PerceptionGrammar | None = None,
    on_text: Callable[[list[int]], None] | None = None,
) -> Answer:
    """Decode one answer under the constraint grammar (see ``DecodeConstraint`` for the grammar knobs).

    ``grid`` is the subgoal image's (h, w) in codes (the vision tokenizer's grid). Under guidance
    (``options.guidance_scale != 1``) ``uncond_prompt_ids`` must end at the same point as the prompt
    (where the answer starts); the answer's image is decoded against both, text against the prompt only.
    ``banned``: token sequences of rejected answer openings the decoder must not produce again.
    ``mentions``: (known, allowed) token sequences of names; text may mention only allowed ones.
    ``on_text``: called once with the answer's ids so far (its text, up to and without BOI) when the
    text ends in an image, before the image is decoded (streaming the sentence).
    """
    mode = DecodeMode.parse(options.mode)
    if mode is DecodeMode.ORACLE:
        raise ValueError("decode mode 'oracle' is not a model decoding mode (use the oracle backend)")
    guided = options.guidance_scale != 1.0
    if guided and not uncond_prompt_ids:
        raise ValueError("guidance_scale != 1 needs the unconditional prompt (uncond_prompt_ids)")
    runner = ForwardCounter(model)
    device = runner.device
    gen = make_generator(options.seed, device)
    def new_constraint() -> DecodeConstraint:
        return DecodeConstraint(
            layout, grid, max_images=max_images, min_images=min_images, max_text_tokens=options.max_text_tokens,
            end_after_image=end_after_image, forbid_in_text=forbid_in_text, final_ids=final_ids,
            text_before_image=text_before_image, text_id_limit=text_id_limit, banned=banned,
            mentions=mentions, step_marker=step_marker, perception_only=perception_only,
            perception_grammar=perception_grammar,
        )  # fmt: skip

    cons = new_constraint()
    times = {"prefill": 0.0, "text": 0.0, "image": 0.0}
    text_conf: list[float] = []
    image_conf: list[float] = []
    codes: np.ndarray | None = None

    t_start = time.perf_counter()
    state, logits = KVState.prefill(runner, list(prompt_ids))
    _sync(device)
    times["prefill"] = time.perf_counter() - t_start
    # Grounded greedy decoding commits token by token, and the name constraint can leave the
    # greedy step with almost none of the model's probability (it wanted to name an object that
    # is not there, e.g. once everything is put away). So the opening step competes with the final
    # answer (a single marker) as a whole: P(a step the constraint can honour), the product over
    # its tokens of ``DecodeConstraint.allowed_probability`` (the final marker excluded at the first
    # token), against P(final). The more probable one is the answer.
    p_final = _final_prob(logits, cons, final_ids) if mentions is not None and options.text_temperature == 0 else None
    mass: list[float] = []
    while not cons.done:
        t0 = time.perf_counter()
        runner.phase = "text"
        text_conf += decode_text(
            state, logits, cons, options.text_temperature, options.text_top_k, options.text_top_p, gen,
            allowed_mass=mass if p_final is not None else None,
        )
        _sync(device)
        times["text"] += time.perf_counter() - t0
        if p_final is not None and cons.phase is Phase.IMAGE and mass:
            p_step = max(mass[0] - p_final, 0.0) * float(np.prod(mass[1:]))
            if p_step < p_final:
                cons = new_constraint()
                cons.advance(final_ids[0])
                cons.advance(cons.forced())  # EOS
                text_conf = [p_final]
                break
        p_final = None  # only the opening text run competes with the final answer
        if cons.phase is not Phase.IMAGE:
            continue
        if on_text is not None and codes is None:
            on_text([t for t in cons.tokens if t != layout.boi])
        if len(state.pending) > 1:  # BOI was forced after a text token never run: cache that token first
            boi = state.pending.pop()
            state.flush()
            state.pending = [boi]
        t0 = time.perf_counter()
        image_state = state
        if guided:  # CFG: one batched stream [cond, uncond], each row over its own prefix
            runner.phase = "uncond_prefill"
            uncond, _ = KVState.prefill(runner, list(uncond_prompt_ids))
            state.pending = []  # BOI; the image decoder re-adds the block
            image_state = KVState.stack([state, uncond])
            image_state.pending = [layout.boi]
        runner.phase = "image"
        if mode is DecodeMode.DIDA:
            block, conf = decode_image_dida(
                image_state, cons, steps=options.dida_steps, schedule=options.dida_schedule,
                init=options.dida_init, guidance_scale=options.guidance_scale,
                temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                generator=gen, confidence_noise=confidence_noise,
            )  # fmt: skip
        else:
            block, conf = decode_image_ar(
                image_state, cons, options.guidance_scale, options.temperature, options.top_k, options.top_p, gen
            )
        if image_state is not state:  # the cond cache never saw the block: append it whole
            state.pending = list(block)
        image_conf += conf
        if codes is None:
            codes = layout.parse_image(block)
        _sync(device)
        times["image"] += time.perf_counter() - t0
    total = time.perf_counter() - t_start
    answer_tokens = list(cons.tokens)
    return Answer(
        tokens=answer_tokens,
        image_codes=codes,
        text_confidence=float(np.mean(text_conf)) if text_conf else 1.0,
        image_confidence=float(np.mean(image_conf)) if image_conf else 1.0,
        forwards=dict(runner.counts),
        timings_ms={k: 1e3 * v for k, v in {**times, "total": total}.items()},
    )
