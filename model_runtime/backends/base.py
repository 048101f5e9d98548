"""The backend interface and the registry of backends by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from emu_guide.types import DecodeMode, Frame, PlanStep


class BackendError(RuntimeError):
    """A backend could not load or could not produce a step; the message names the problem."""


# DiDA parallel refinement steps when the caller gives none: 4 keeps the default model's full step
# near 100 ms on a 2-core CPU (docs/BENCHMARKS.md); GPU hosts with large models may use 8.
DEFAULT_DIDA_STEPS = 4

# Values of the options a model may set its own defaults for, when the caller leaves them None
# (``DecodeOptions.unset``): what the default tiny model was trained and benchmarked with.
GENERIC_DEFAULTS: dict[str, Any] = {
    "mode": DecodeMode.DIDA,
    "guidance_scale": 1.0,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "text_temperature": 0.0,
    "text_top_k": 0,
    "text_top_p": 1.0,
}

# The releases' own sampling settings per token kind (their inference configs), used by the
# backends for the options a caller leaves unset. Emu3.5 (configs/config.py of baaivision/Emu3.5):
# text top-k 1024 / top-p 0.9 / temperature 1; image tokens top-k 10240 (5120 for x2i), top-p 1,
# temperature 1; classifier-free guidance 3 for interleaved output (a guidance step is text + an
# image). Emu3 (v1, its generation example): image top-k 2048 and guidance 3; text greedy.
OFFICIAL_DECODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "emu35": {"text_temperature": 1.0, "text_top_k": 1024, "text_top_p": 0.9,
              "temperature": 1.0, "top_k": 10240, "top_p": 1.0, "guidance_scale": 3.0},
    "emu35-x2i": {"text_temperature": 1.0, "text_top_k": 1024, "text_top_p": 0.9,
                  "temperature": 1.0, "top_k": 5120, "top_p": 1.0, "guidance_scale": 3.0},
    "emu3": {"temperature": 1.0, "top_k": 2048, "top_p": 1.0, "guidance_scale": 3.0},
}  # fmt: skip


@dataclass
class DecodeOptions:
    """Per-call decoding options (every backend accepts them; unsupported ones raise).

    ``mode``, ``guidance_scale`` and the per-token-kind sampling fields default to None: "the
    model's default". They read back as ``GENERIC_DEFAULTS`` right away (so a caller always sees
    a value) and are listed in ``unset``; a backend replaces the unset ones with its model's own
    defaults (``with_defaults``): DiDA only for DiDA-adapted weights, the releases' official
    sampling for Emu3.5 / Emu3 checkpoints. Anything the caller sets is kept as given.
    """

    # None: the backend's default (DiDA for DiDA-adapted models, else AR).
    mode: DecodeMode | str | None = None
    dida_steps: int = DEFAULT_DIDA_STEPS  # K parallel refinement steps for the subgoal image
    dida_schedule: str = "cosine"  # fraction still uncommitted after step t: cos(pi/2 * t/K)
    dida_init: str = "mask"  # "mask" (absorbing) or "uniform" (random codes, URSA-style)
    guidance_scale: float | None = None  # classifier-free guidance on image tokens only (1.0 = off)
    temperature: float | None = None  # image-token sampling temperature (0 = greedy)
    top_k: int | None = None  # image tokens (0 = off)
    top_p: float | None = None
    text_temperature: float | None = None  # 0 = greedy text (deterministic plans)
    text_top_k: int | None = None
    text_top_p: float | None = None
    max_text_tokens: int = 48
    seed: int | None = 0
    # Re-planning: answers the planner rejected for this step. The decoder may not give them again,
    # so the model's next-best answer comes out instead of the same one (greedy text is deterministic).
    avoid_texts: tuple[str, ...] = ()  # step sentences
    avoid_final: bool = False  # the "task complete" answer
    # Grounded decoding: the caller's detector decides what may be named. ``known_names``: every
    # object name the caller can recognise (a detector's class list); ``allowed_names``: those it
    # sees now (plus what is held, and targets). Text may mention a known name only if it is
    # allowed, so the model picks among things that exist. Empty ``known_names``: off.
    known_names: tuple[str, ...] = ()
    allowed_names: tuple[str, ...] = ()
    # "Perceive" answers (model_runtime/prompt.py): the perception text of THIS frame to teacher-force
    # as the answer's start instead of decoding it (the frame verifier already perceived the frame:
    # the loop reuses that, so a perception is decoded once per frame). None: the model decodes it.
    perception: str | None = None
    # DiDA on weights that were never DiDA-adapted (e.g. the released Emu3.5 / Emu3 checkpoints)
    # is refused unless forced: parallel decoding with a next-token model gives poor images.
    force_dida: bool = False
    # Streaming: called with the step (index, sentence, perception; no subgoal image yet) as soon as
    # its text is decoded, before the image, so a caller can show the sentence while the image is
    # decoded. Backends that produce an answer in one piece (vLLM, the oracle) do not call it.
    on_text: Callable[[PlanStep], None] | None = None
    # Names of the fields above left to the model (filled in by __post_init__; kept by
    # dataclasses.replace as long as the value is still the generic default).
    unset: tuple[str, ...] | None = None

    def with_defaults(self, defaults: dict[str, Any]) -> DecodeOptions:
        """These options with the unset fields taken from ``defaults`` (a model's); none left unset."""
        import dataclasses

        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if k in self.unset}, unset=())

    def __post_init__(self) -> None:
        unset = [name for name in GENERIC_DEFAULTS if getattr(self, name) is None]
        for name in unset:
            setattr(self, name, GENERIC_DEFAULTS[name])
        self.mode = DecodeMode.parse(self.mode)
        if self.unset is not None:  # a copy (dataclasses.replace): still unset unless given a new value
            if not set(self.unset) <= set(GENERIC_DEFAULTS):
                raise ValueError(f"unset names unknown fields: {sorted(set(self.unset) - set(GENERIC_DEFAULTS))}")
            unset += [n for n in self.unset if n not in unset and getattr(self, n) == GENERIC_DEFAULTS[n]]
        self.unset = tuple(unset)
        if self.dida_steps < 1:
            raise ValueError(f"dida_steps must be >= 1, got {self.dida_steps}")
        if self.dida_schedule not in ("cosine", "linear"):
            raise ValueError(f"dida_schedule must be 'cosine' or 'linear', got {self.dida_schedule!r}")
        if self.dida_init not in ("mask", "uniform"):
            raise ValueError(f"dida_init must be 'mask' or 'uniform', got {self.dida_init!r}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.top_k < 0 or self.text_top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}, {self.text_top_k}")
        if self.temperature < 0 or self.text_temperature < 0:
            raise ValueError("temperatures must be >= 0")
        if not 0.0 < self.top_p <= 1.0 or not 0.0 < self.text_top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}, {self.text_top_p}")
        self.avoid_texts = tuple(self.avoid_texts)
        if not all(isinstance(t, str) and t.strip() for t in self.avoid_texts):
            raise ValueError(f"avoid_texts must be non-empty strings, got {self.avoid_texts!r}")
        self.known_names = tuple(self.known_names)
        self.allowed_names = tuple(self.allowed_names)
        for what, names in (("known_names", self.known_names), ("allowed_names", self.allowed_names)):
            if not all(isinstance(n, str) and n.strip() for n in names):
                raise ValueError(f"{what} must be non-empty strings, got {names!r}")
        if self.allowed_names and not self.known_names:
            raise ValueError("allowed_names without known_names constrains nothing; give the known names too")
        if self.perception is not None and (not isinstance(self.perception, str) or not self.perception.strip()):
            raise ValueError(f"perception must be a non-empty perception text or None, got {self.perception!r}")
        if self.max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1, got {self.max_text_tokens}")


@dataclass
class Perceived:
    """What a "perceive" model says it sees in a frame (``perceive``: the answer's start, no step).

    ``perception`` is ``model_runtime.prompt.parse_perception``'s dict (``{"objects": [{"name",
    "colour", "kind", "cell"}], "holding"}``), or None when the text does not parse (``error`` says
    why). ``text`` is what the model said, marker included; pass it as ``DecodeOptions.perception``
    to make it the start of the next answer for the same frame."""

    text: str
    perception: dict[str, Any] | None
    error: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)  # "prefill", "text", "total"


@dataclass
class StepCheck:
    """A model's judgement of whether a step happened between two frames (``check_step``)."""

    step_text: str
    p_happened: float  # the step verifier's probability that the step happened
    ms: float = 0.0
    threshold: float = 0.5  # p_happened at or above it: happened (the verifier's own threshold)
    unknown_words: list[str] = field(default_factory=list)  # words of step_text the verifier never saw in training

    @property
    def happened(self) -> bool:
        return self.p_happened >= self.threshold


@runtime_checkable
class GuidanceBackend(Protocol):
    """What the guidance session, the planner and the ROS node need from a model."""

    name: str  # registry name ("torch", "emu3", "vllm", "oracle")
    model_id: str  # what was loaded (path or description), reported in Plan.model_id
    image_size: tuple[int, int]  # (height, width) the backend expects; frames are resized to it

    def next_step(
        self,
        frame: Frame,
        instruction: str,
        history: list[PlanStep],
        options: DecodeOptions | None = None,
    ) -> PlanStep:
        """The next plan step (sentence + subgoal image) given the current frame and done steps.

        Returns a PlanStep with ``is_final=True`` when the model says the task is complete.
        Raises BackendError (never returns garbage) when it cannot.
        """
        ...

    def close(self) -> None: ...


# name -> "module:Class". Imported only when asked for.
BACKENDS: dict[str, str] = {
    "torch": "model_runtime.backends.torch_backend:TorchBackend",
    "emu3": "model_runtime.backends.emu3_backend:Emu3Backend",
    "vllm": "model_runtime.backends.vllm_backend:VllmBackend",
    "oracle": "model_runtime.backends.oracle:OracleBackend",
}


def load_backend(name: str, **kwargs: Any) -> GuidanceBackend:
    """Instantiate a backend by registry name; kwargs go to its constructor (model_path, device, env...)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; expected one of {sorted(BACKENDS)}") from None
    module_name, class_name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(**kwargs)
