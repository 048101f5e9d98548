"""vLLM V1 engine-level logits processor: our constraint per request (imported in vLLM's worker process).

Given to the engine as ``LLM(logits_processors=["model_runtime.backends.vllm_logits:EmuConstraintLogitsProcessor"])``.
A request opts in by carrying ``SamplingParams(extra_args={"emu_constraint": spec})`` with a
``vllm_backend.request_spec``; other requests pass through untouched. Imports vllm at module level
(it subclasses vLLM's ``AdapterLogitsProcessor``): only the vllm backend names this module.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from model_runtime.backends.vllm_backend import SPEC_KEY, processor_from_spec

__all__ = ["EmuConstraintLogitsProcessor"]


class EmuConstraintLogitsProcessor(AdapterLogitsProcessor):
    """Wraps ``ConstrainedLogitsProcessor`` (grammar + per-phase sampling) for each opted-in request."""

    def is_argmax_invariant(self) -> bool:
        return False  # it forces and bans tokens: greedy requests need it too

    def new_req_logits_processor(self, params: Any):
        spec = (getattr(params, "extra_args", None) or {}).get(SPEC_KEY)
        if spec is None:
            return None
        proc = processor_from_spec(spec)
        return lambda output_ids, logits: proc(output_ids, logits)
