"""Backends: anything that turns (frame, instruction, history) into the next PlanStep.

Select one by name with ``load_backend``; modules are imported lazily so that asking for the
``oracle`` backend needs no torch and asking for ``vllm`` on a CPU host fails with a clear
"needs a CUDA GPU / pip install ..." error instead of an ImportError deep inside.
"""

from model_runtime.backends.base import (
    BACKENDS,
    BackendError,
    DecodeOptions,
    GuidanceBackend,
    load_backend,
)

__all__ = ["BACKENDS", "BackendError", "DecodeOptions", "GuidanceBackend", "load_backend"]
