"""The backend interface and the registry of backends by name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from emu_guide.types import DecodeMode, Frame, PlanStep


class BackendError(RuntimeError):
    """A backend could not load or could not produce a step; the message names the problem."""


@dataclass
class DecodeOptions:
    """Per-call decoding options (every backend accepts them; unsupported ones raise)."""

    mode: DecodeMode = DecodeMode.DIDA
    # K parallel refinement steps for the subgoal image. 4 keeps the default model's full step
    # under 100 ms on a 2-core CPU (docs/BENCHMARKS.md); GPU hosts with large models may use 8.
    dida_steps: int = 4
    dida_schedule: str = "cosine"  # fraction still uncommitted after step t: cos(pi/2 * t/K)
    dida_init: str = "mask"  # "mask" (absorbing) or "uniform" (random codes, URSA-style)
    guidance_scale: float = 1.0  # classifier-free guidance on image tokens only (1.0 = off)
    temperature: float = 1.0  # image-token sampling temperature (0 = greedy)
    top_k: int = 0  # image tokens (0 = off)
    top_p: float = 1.0
    text_temperature: float = 0.0  # 0 = greedy text (deterministic plans)
    text_top_k: int = 0
    text_top_p: float = 1.0
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

    def __post_init__(self) -> None:
        self.mode = DecodeMode.parse(self.mode)
        if self.dida_steps < 1:
            raise ValueError(f"dida_steps must be >= 1, got {self.dida_steps}")
        if self.dida_schedule not in ("cosine", "linear"):
            raise ValueError(f"dida_schedule must be 'cosine' or 'linear', got {self.dida_schedule!r}")
        if self.dida_init not in ("mask", "uniform"):
            raise ValueError(f"dida_init must be 'mask' or 'uniform', got {self.dida_init!r}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
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
        if self.max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1, got {self.max_text_tokens}")


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
