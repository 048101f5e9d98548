"""Real Emu3.5 on a GPU host through vLLM's Qwen3 support, with our logits processing.

Emu3.5's LM has ``Qwen3ForCausalLM``'s architecture and weight names, so vLLM serves it as a
Qwen3 model (``config.json`` with ``architectures: ["Qwen3ForCausalLM"]``; vocabulary 282,926).
vLLM samples; ``ConstrainedLogitsProcessor`` (ours) decides what may be sampled: the shared
constraint grammar (``DecodeConstraint``: visual ids banned in text, image header/IMG/EOL/EOI
forced, cells visual-only) plus per-phase temperature/top-k/top-p (text and image tokens have
different settings in ``DecodeOptions``; vLLM is run at temperature 1 and we shape the logits).

What vLLM's engine cannot do, this backend refuses with a BackendError instead of faking it:

- DiDA: needs one forward of a block under a custom 4D mask over a cached prefix; vLLM's paged
  attention exposes no such mask. Use ``mode="ar"`` here, or the torch backend.
- Classifier-free guidance: needs the conditional and unconditional logits of the same step
  together; vLLM's per-request logits processors see one request.

GPU only: vllm is imported lazily through ``emu_guide.optional.require``; elsewhere the
constructor says what is missing. The logits processor is plain torch and is tested on CPU.

vLLM versions: per-request ``SamplingParams(logits_processors=[...])`` callables belong to vLLM's
V0 engine (selected with ``VLLM_USE_V1=0``, which this backend sets unless the caller did);
releases without the V0 engine need the processor wrapped in their engine-level
LogitsProcessor API. Never run here (no GPU, no vllm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from emu_guide.types import DecodeMode, Frame, PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions
from model_runtime.backends.torch_backend import LocalModelBackend
from model_runtime.decoding.constraints import DecodeConstraint, Phase
from model_runtime.decoding.sampling import filter_logits
from model_runtime.layout import TokenLayout, emu35

__all__ = ["ConstrainedLogitsProcessor", "VllmBackend"]


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


class VllmBackend(LocalModelBackend):
    """Emu3.5 (or any Qwen3-architecture checkpoint with the emu35 layout) served by vLLM."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path | None = None,
        vision_tokenizer_path: str | Path | None = None,
        text_tokenizer_path: str | Path | None = None,
        image_size: tuple[int, int] = (512, 512),
        device: str = "cuda",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "bfloat16",
        task: str = "vla",
        **unused: Any,
    ) -> None:
        from emu_guide.optional import MissingDependency, require

        if unused:
            raise BackendError(f"vllm backend: unknown arguments {sorted(unused)}")
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            raise BackendError(
                "vllm backend needs a CUDA GPU and vllm (pip install 'emu-guidance[gpu]'); this host has"
                f" {'no CUDA GPU' if not torch.cuda.is_available() else 'device ' + repr(device)}."
                " Use the torch backend on CPU."
            )
        import os

        os.environ.setdefault("VLLM_USE_V1", "0")  # per-request logits processors: the V0 engine
        try:
            vllm = require("vllm")
        except MissingDependency as exc:
            raise BackendError(f"vllm backend needs a CUDA GPU and vllm: {exc}") from None
        if model_path is None:
            raise BackendError("vllm backend: model_path (an Emu3.5 checkpoint directory) is required")
        path = Path(model_path)
        self.layout = emu35()
        cfg_file = path / "config.json"
        try:
            raw = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BackendError(f"vllm backend: {cfg_file}: cannot read ({exc})") from None
        if int(raw.get("vocab_size", 0)) < self.layout.vocab_size:
            raise BackendError(
                f"vllm backend: {cfg_file}: vocab_size {raw.get('vocab_size')} < {self.layout.vocab_size} of the emu35"
                " layout (wrong layout for this checkpoint)"
            )
        from model_runtime.lm import LMLoadError, _check_checkpoint_files
        from model_runtime.text_tokenizer import HFTextTokenizer, TextTokenizerError
        from model_runtime.tokenizers import VisionTokenizerError, load_vision_tokenizer

        try:
            _check_checkpoint_files(path)
            self.text = HFTextTokenizer.load(text_tokenizer_path or path)
            self.text.check_layout(self.layout)
            self.vision = load_vision_tokenizer(vision_tokenizer_path or path / "vision_tokenizer", device=device)
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
        self.lm = None  # type: ignore[assignment]  (vLLM owns the weights)
        self._vllm = vllm
        self.engine = vllm.LLM(  # VLLM_USE_V1 was set before vllm was imported (see require above)
            model=str(path), skip_tokenizer_init=True, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
        )  # fmt: skip

    def next_step(
        self, frame: Frame, instruction: str, history: list[PlanStep], options: DecodeOptions | None = None
    ) -> PlanStep:
        import time

        from model_runtime.decoding import answer_grammar
        from model_runtime.prompt import ParseError, build_prompt, parse_answer

        options = self._options(options)
        if options.mode is DecodeMode.DIDA:
            raise BackendError(
                "vllm backend: DiDA needs a custom 4D attention mask over a cached prefix, which vLLM's engine does"
                " not expose; use DecodeOptions(mode='ar') here or the torch backend for DiDA"
            )
        if options.guidance_scale != 1.0:
            raise BackendError(
                "vllm backend: classifier-free guidance needs cond and uncond logits in one step, which vLLM's"
                " per-request logits processors cannot see; use guidance_scale=1.0 or the torch backend"
            )
        self.check_instruction(instruction)
        t0 = time.perf_counter()
        codes = self.vision.encode_one(self.prepare_frame(frame))
        prompt = build_prompt(self.layout, self.text, instruction, [h.text for h in history], codes, task=self.task)
        grid = tuple(codes.shape)
        proc = ConstrainedLogitsProcessor(self.layout, grid, options, text_id_limit=self.text.vocab_size,
                                          banned=self.banned_openings(options), mentions=self.mention_ids(options),
                                          **answer_grammar(self.layout))  # fmt: skip
        params = self._vllm.SamplingParams(
            temperature=1.0, max_tokens=options.max_text_tokens + self.layout.image_block(*grid).length + 2,
            logits_processors=[proc], seed=options.seed, stop_token_ids=[self.layout.eos], detokenize=False,
        )  # fmt: skip
        out = self.engine.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0].outputs[0]
        tokens = list(out.token_ids)
        try:
            parsed = parse_answer(self.layout, self.text, tokens, expected_grid=grid)
        except ParseError as exc:
            raise BackendError(f"vllm backend: the model's answer does not parse: {exc}") from None
        subgoal = None if parsed.codes is None else self.vision.decode_one(parsed.codes)
        return PlanStep(
            index=len(history), text=parsed.text, subgoal_image=subgoal, subgoal_tokens=parsed.codes,
            decode_mode=options.mode, timings_ms={"total": 1e3 * (time.perf_counter() - t0)}, is_final=parsed.is_final,
        )  # fmt: skip

    def close(self) -> None:
        self.engine = None
