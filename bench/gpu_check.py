"""GPU check for a lent CUDA machine (about 4-6 minutes on one H100; refuses to run without CUDA).

    python bench/gpu_check.py [--out runs/bench/gpu_check.json] [--quick]

1. Decode bench on a >= 1B-parameter random Emu3.5-shaped model in bfloat16 (head 128, 8:1 q:kv
   heads, MLP 5x, untied head; 131,072 visual codes): one image block after the same cached
   300-token prompt at 256 and 1024 image tokens, AR (one forward per cell) vs DiDA (K=8 block
   forwards): sequential forwards, wall-clock p50, peak CUDA memory the decode adds, AR/DiDA
   ratios. Attention: flash_attention_2 when flash_attn imports, else SDPA (its own flash kernels).
2. The Emu3.5 release format on CUDA: a tiny release-format checkpoint (built like the tests' fixture)
   loads through the torch backend in bfloat16 by default and plans one step.
3. The CUDA-marked tests (``pytest -m gpu``), and the vLLM backend on CUDA when vllm is installed
   (greedy tokens against the torch backend on the same checkpoint).

Everything lands in one JSON (and a short table on stdout). Random weights: decoding cost does not
depend on their values. The suite never depends on this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_decode(args: argparse.Namespace, device) -> dict:
    import numpy as np
    import torch

    from model_runtime.bench_decode import _prompt, decode_one_image
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm, count_params, pick_attn_implementation

    layout = compact(num_text_words=2_000, num_visual_codes=131_072)
    cfg = LMConfig.emu35_shaped(layout.vocab_size, hidden_size=args.hidden, num_layers=args.layers)
    attn = pick_attn_implementation(device)
    t0 = time.perf_counter()
    model = build_lm(cfg, attn_implementation=attn).to(device, torch.bfloat16)
    params = count_params(model)
    prompt = _prompt(layout, 300)
    for mode in ("ar", "dida"):  # warm-up
        decode_one_image(model, layout, prompt, (2, 2), mode, args.dida_steps, seed=0)
    rows = []
    for tokens in args.sizes:
        side = int(round(tokens**0.5))
        for mode in ("ar", "dida"):
            runs = [decode_one_image(model, layout, prompt, (side, side), mode, args.dida_steps, seed=r + 1)
                    for r in range(args.repeats)]  # fmt: skip
            ms = [r["ms"] for r in runs]
            rows.append(dict(tokens=tokens, mode=mode, forwards=runs[0]["forwards"], p50_ms=float(np.median(ms)),
                             min_ms=min(ms), runs=len(ms), peak_mem_mb=max(r["peak_mb"] for r in runs)))  # fmt: skip
            print(f"  {tokens:5d} tokens {mode:4s}: {rows[-1]['forwards']:5d} forwards, p50 {rows[-1]['p50_ms']:9.1f} ms,"
                  f" +{rows[-1]['peak_mem_mb']:.0f} MB", flush=True)  # fmt: skip
    ratios = []
    for ar in (r for r in rows if r["mode"] == "ar"):
        dd = next(r for r in rows if r["mode"] == "dida" and r["tokens"] == ar["tokens"])
        ratios.append(dict(tokens=ar["tokens"], forward_ratio=ar["forwards"] / dd["forwards"],
                           speedup_p50=ar["p50_ms"] / dd["p50_ms"]))  # fmt: skip
    del model
    torch.cuda.empty_cache()
    return dict(params=params, config=cfg.__dict__, attn_implementation=attn, dtype="bfloat16",
                dida_steps=args.dida_steps, build_s=time.perf_counter() - t0, rows=rows, ratios=ratios,
                target="DiDA >= 20x faster than AR at 1024 tokens",
                target_met=any(r["tokens"] == 1024 and r["speedup_p50"] >= 20 for r in ratios))  # fmt: skip


def release_on_cuda() -> dict:
    import numpy as np
    import torch

    from emu_guide.types import Frame
    from model_runtime.backends.base import BackendError, DecodeOptions, load_backend
    from tests.model_runtime.backends.emu35_release import make_release

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir, tok_dir, _ = make_release(Path(tmp), initializer_range=0.2, hidden=128, layers=2, heads=2, kv_heads=1,
                                          head_dim=64)  # fmt: skip
        b = load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True,
                         device="cuda", image_size=(8, 8))  # fmt: skip
        out.update(dtype=str(b.lm.dtype), device=str(b.lm.device), default_mode=b.default_mode.value)
        frame = Frame(image=np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
        greedy = DecodeOptions(mode="ar", temperature=0.0, text_temperature=0.0, guidance_scale=1.0, max_text_tokens=4)
        try:
            step = b.next_step(frame, "clear the table", [], greedy)
            out["step"] = step.text
        except BackendError as exc:
            out["step_error"] = str(exc)
        out["torch_tokens"] = b.last_answer.tokens
        b.close()
        torch.cuda.empty_cache()
        try:
            import vllm  # noqa: F401
        except ImportError:
            out["vllm"] = "not installed: skipped"
            return out
        v = load_backend("vllm", model_path=lm_dir, text_tokenizer_path=tok_dir, trust_remote_code=True, device="cuda",
                         image_size=(8, 8), dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=1024)  # fmt: skip
        try:
            v.next_step(frame, "clear the table", [], greedy)
        except BackendError as exc:
            out["vllm_step_error"] = str(exc)
        out["vllm_tokens"] = v.last_tokens
        out["vllm_equal_torch"] = v.last_tokens == out["torch_tokens"]  # bf16 both sides: near-ties may differ
        v.close()
    return out


def gpu_tests() -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/model_runtime"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return dict(returncode=proc.returncode, summary=tail[0], wall_s=time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "gpu_check.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--hidden", type=int, default=2048, help="model width (2048 x 16 layers: ~1.7B parameters)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dida-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="sizes 256 only, 1 repeat (a smoke run)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this host; run it on a GPU machine", file=sys.stderr)
        return 2
    if args.quick:
        args.sizes, args.repeats = [256], 1
    device = torch.device("cuda")
    result: dict = dict(host=platform.node(), gpu=torch.cuda.get_device_name(0), torch=torch.__version__,
                        started=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
    import transformers

    result["transformers"] = transformers.__version__
    t0 = time.perf_counter()
    for name, fn in (("decode", lambda: bench_decode(args, device)), ("release_cuda", release_on_cuda),
                     ("gpu_tests", gpu_tests)):  # fmt: skip
        print(f"[gpu_check] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as exc:  # record and go on: one failing part must not lose the others' numbers
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        result[name]["wall_s"] = time.perf_counter() - t
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    result["total_s"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    for r in result.get("decode", {}).get("ratios", []):
        print(f"[gpu_check] {r['tokens']} tokens: AR/DiDA forwards {r['forward_ratio']:.0f}x, wall {r['speedup_p50']:.1f}x")
    print(f"[gpu_check] wrote {args.out} ({result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
