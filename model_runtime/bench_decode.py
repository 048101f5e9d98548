"""``emu-guide bench-decode``: AR vs DiDA subgoal-image decoding on the same model and prompt.

For each model (the default architecture and a larger random Emu3.5-shaped one) and each image
size (64, 256, 1024 tokens = 8x8, 16x16, 32x32 codes) it decodes the image block after the same
cached prompt with AR (one forward per cell) and with DiDA (K block forwards), and reports
sequential forward passes, wall-clock per image (p50/p95), the AR/DiDA ratios and the peak memory
the decode adds. Then one full next step of the default model (frame encode, prompt prefill,
~10 text tokens, a 12x12 DiDA subgoal, subgoal decode) through the real TorchBackend.

Weights are random: decoding cost does not depend on their values (the grammar fixes the
number of tokens). Results: a printed table, ``runs/bench/decode.json`` and ``decode.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIZES = (64, 256, 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the cuda path times with cuda synchronize)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscription on a shared host)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="image tokens (perfect squares)")
    parser.add_argument("--models", nargs="+", default=["default", "emu35-shaped"], choices=["default", "emu35-shaped"])
    parser.add_argument("--dida-steps", type=int, default=8, help="K refinement steps")
    parser.add_argument("--prompt-tokens", type=int, default=300, help="cached prompt length before the image")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per (model, size, mode) for the default model")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed runs for the emu35-shaped model")
    parser.add_argument("--large-hidden", type=int, default=1024, help="emu35-shaped width (head_dim 128, 8:1 q:kv heads)")
    parser.add_argument("--large-layers", type=int, default=4)
    parser.add_argument("--full-step-repeats", type=int, default=15, help="timed full next steps (default model)")
    parser.add_argument("--full-step-k", type=int, nargs="+", default=[4, 8], help="DiDA steps K for the full step")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--out", default=None, help="JSON path (default: <runs>/bench/decode.json)")


class PeakRSS:
    """Peak resident-set growth while a block runs (CPU): /proc/self/statm sampled every 0.5 ms."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.0005)

    def __enter__(self) -> PeakRSS:
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _models(names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig

    out = []
    for name in names:
        if name == "default":
            layout = compact(num_text_words=300, num_visual_codes=1000)  # FSQ default: 1000 codes
            cfg = LMConfig(vocab_size=layout.vocab_size)
            out.append(dict(name=name, layout=layout, config=cfg, repeats=args.repeats))
        else:
            # Emu3.5's block ratios (head 128, 8 query heads per KV head, MLP 5x, untied head), scaled
            # to run on a CPU; a 32,768-code visual vocabulary (Emu3's) instead of 131,072.
            layout = compact(num_text_words=2_000, num_visual_codes=32_768)
            cfg = LMConfig.emu35_shaped(layout.vocab_size, hidden_size=args.large_hidden, num_layers=args.large_layers)
            out.append(dict(name=name, layout=layout, config=cfg, repeats=args.large_repeats))
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompt(layout, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    words = rng.integers(layout.text_vocab_size - 100, layout.text_vocab_size, size=max(1, n - 3)).tolist()
    return [layout.bos, layout.extra["user"]] + words + [layout.extra["assistant"]]


def decode_one_image(model, layout, prompt: list[int], grid: tuple[int, int], mode: str, steps: int, seed: int) -> dict:
    """Prefill (untimed), then decode one image block from BOI to EOI (timed)."""
    import torch

    from model_runtime.decoding import DecodeConstraint, ForwardCounter, KVState, make_generator
    from model_runtime.decoding.ar import decode_image_ar
    from model_runtime.decoding.dida import decode_image_dida

    runner = ForwardCounter(model)
    device = runner.device
    with torch.inference_mode():
        state, _ = KVState.prefill(runner, prompt)
        _sync(device)
        cons = DecodeConstraint(layout, grid)
        cons.advance(layout.boi)
        state.pending.append(layout.boi)
        runner.phase = "image"
        gen = make_generator(seed, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        with PeakRSS() as mem:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            if mode == "dida":
                block, _ = decode_image_dida(state, cons, steps=steps, temperature=1.0, top_k=0, generator=gen)
            else:
                block, _ = decode_image_ar(state, cons, 1.0, 1.0, 0, 1.0, gen)
            _sync(device)
            elapsed = time.perf_counter() - t0
            cpu = time.thread_time() - c0
    layout.parse_image(block)  # the grammar guarantees this; checked anyway
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else mem.added_mb
    return dict(ms=1e3 * elapsed, cpu_ms=1e3 * cpu, forwards=runner.counts["image"], peak_mb=peak)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_images(args: argparse.Namespace, device, dtype) -> tuple[list[dict], list[dict], list[dict]]:
    import torch
    from tqdm import tqdm

    from model_runtime.lm import build_lm, count_params, pick_attn_implementation

    rows, models = [], []
    specs = _models(args.models, args)
    total = sum(len(args.sizes) * 2 * m["repeats"] for m in specs)
    bar = tqdm(total=total, desc="bench-decode", unit="image")
    for spec in specs:
        model = build_lm(spec["config"], attn_implementation=pick_attn_implementation(device)).to(device, dtype)
        params = count_params(model)
        models.append(dict(name=spec["name"], params=params, config=spec["config"].__dict__))
        prompt = _prompt(spec["layout"], args.prompt_tokens)
        for mode in ("ar", "dida"):  # warm-up: first-call allocations and kernel selection
            decode_one_image(model, spec["layout"], prompt, (2, 2), mode, args.dida_steps, seed=0)
        for tokens in args.sizes:
            side = int(round(tokens**0.5))
            if side * side != tokens:
                raise SystemExit(f"--sizes: {tokens} is not a perfect square")
            for mode in ("ar", "dida"):
                runs = []
                for r in range(spec["repeats"]):
                    runs.append(decode_one_image(model, spec["layout"], prompt, (side, side), mode, args.dida_steps, r + 1))
                    bar.update(1)
                times = [x["ms"] for x in runs]
                cpu = [x["cpu_ms"] for x in runs]
                rows.append(dict(
                    model=spec["name"], params=params, tokens=tokens, grid=[side, side], mode=mode,
                    dida_steps=args.dida_steps if mode == "dida" else None,
                    block_tokens=spec["layout"].image_block(side, side).length,
                    forwards=runs[0]["forwards"], p50_ms=_pct(times, 50), p95_ms=_pct(times, 95),
                    cpu_p50_ms=_pct(cpu, 50),
                    runs=len(times), peak_mem_mb=max(x["peak_mb"] for x in runs),
                ))  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    ratios = []
    for ar in (r for r in rows if r["mode"] == "ar"):
        dd = next(r for r in rows if r["mode"] == "dida" and r["model"] == ar["model"] and r["tokens"] == ar["tokens"])
        ratios.append(dict(
            model=ar["model"], tokens=ar["tokens"], forward_ratio=ar["forwards"] / dd["forwards"],
            # +1: the forward that caches the finished block if text followed (both modes need it)
            forward_ratio_with_commit=(ar["forwards"] + 1) / (dd["forwards"] + 1),
            speedup_p50=ar["p50_ms"] / dd["p50_ms"],
            speedup_cpu_p50=ar["cpu_p50_ms"] / dd["cpu_p50_ms"],
        ))  # fmt: skip
    return rows, ratios, models


def bench_full_step(args: argparse.Namespace, device, dtype, k: int) -> dict:
    """One full next step of the default model through TorchBackend's parts (random weights).

    Identical to ``TorchBackend.next_step`` except the grammar forbids the <done> answer, so every
    step writes text then a subgoal image like a trained model's non-final step (a random model may
    otherwise answer <done> at once and skip the image).
    """

    from emu_guide.types import Frame, PlanStep
    from model_runtime.backends.base import DecodeOptions
    from model_runtime.backends.torch_backend import TorchBackend, save_model_dir
    from model_runtime.decoding import answer_grammar, generate_answer
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.prompt import build_prompt
    from model_runtime.text_tokenizer import WordTokenizer
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    words = [f"w{i}" for i in range(300)]
    text = WordTokenizer(words)
    vision = FSQTokenizer.from_config(FSQConfig())  # the default: 96x96 -> 12x12 codes, 1000 codes
    layout = compact(text.vocab_size, vision.num_codes)
    cfg = LMConfig(vocab_size=layout.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(tmp, build_lm(cfg), vision, text, layout, lm_config=cfg)
        backend = TorchBackend(tmp, device=str(device), dtype=dtype)
    rng = np.random.default_rng(0)
    frame = Frame(image=rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    instruction = " ".join(words[:10])
    history = [PlanStep(index=i, text=" ".join(words[10 + 8 * i : 18 + 8 * i])) for i in range(3)]
    opts = DecodeOptions(mode="dida", dida_steps=k, max_text_tokens=10, seed=0)
    grammar = {**answer_grammar(layout), "final_ids": ()}
    forbid = list(grammar.pop("forbid_in_text")) + [layout.extra["done"]]
    runs, parts = [], []
    cpu_runs = []
    for r in range(args.full_step_repeats + 2):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        image = backend.prepare_frame(frame)
        codes = backend.vision.encode_one(image)
        prompt = build_prompt(layout, text, instruction, [h.text for h in history], codes)
        opts.seed = r
        answer = generate_answer(backend.lm, prompt, layout, tuple(codes.shape), opts, forbid_in_text=forbid, **grammar)
        subgoal = backend.vision.decode_one(answer.image_codes)
        _sync(device)
        ms = 1e3 * (time.perf_counter() - t0)
        cpu_ms = 1e3 * (time.thread_time() - c0)
        assert subgoal.shape == (96, 96, 3)
        if r >= 2:  # two warm-up steps
            runs.append(ms)
            cpu_runs.append(cpu_ms)
            parts.append(dict(answer.timings_ms, text_tokens=answer.tokens.index(layout.boi), prompt_tokens=len(prompt),
                              forwards=answer.forwards))  # fmt: skip
    mean = {k: statistics.mean(p[k] for p in parts) for k in ("prefill", "text", "image", "text_tokens", "prompt_tokens")}
    return dict(
        p50_ms=_pct(runs, 50), p95_ms=_pct(runs, 95), cpu_p50_ms=_pct(cpu_runs, 50), runs=len(runs),
        dida_steps=k,
        grid=list(codes.shape), mean_parts_ms={k: v for k, v in mean.items() if k in ("prefill", "text", "image")},
        mean_text_tokens=mean["text_tokens"], prompt_tokens=mean["prompt_tokens"], forwards=parts[-1]["forwards"],
        other_ms=statistics.mean(runs) - sum(mean[k] for k in ("prefill", "text", "image")),
    )  # fmt: skip


def _table(rows: list[dict], ratios: list[dict], fulls: list[dict]) -> str:
    lines = [
        f"{'model':<13} {'params':>7} {'tokens':>6} {'mode':<5} {'fwd':>5} {'p50 ms':>9} {'p95 ms':>9} {'cpu p50':>9}"
        f" {'peak MB':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<13} {r['params'] / 1e6:>6.1f}M {r['tokens']:>6} {r['mode']:<5} {r['forwards']:>5}"
            f" {r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} {r['cpu_p50_ms']:>9.1f} {r['peak_mem_mb']:>8.1f}"
        )
    lines.append("")
    lines.append(f"{'model':<13} {'tokens':>6} {'fwd AR/DiDA':>12} {'(+commit)':>10} {'speedup p50':>12} {'cpu speedup':>12}")
    for q in ratios:
        lines.append(
            f"{q['model']:<13} {q['tokens']:>6} {q['forward_ratio']:>11.1f}x {q['forward_ratio_with_commit']:>9.1f}x"
            f" {q['speedup_p50']:>11.2f}x {q['speedup_cpu_p50']:>11.2f}x"
        )
    if fulls:
        lines.append("")
    for full in fulls:
        p = full["mean_parts_ms"]
        lines.append(
            f"full next step (default model, {full['prompt_tokens']:.0f}-token prompt, {full['mean_text_tokens']:.1f} text"
            f" tokens, {full['grid'][0]}x{full['grid'][1]} DiDA K={full['dida_steps']}): p50 {full['p50_ms']:.1f} ms,"
            f" p95 {full['p95_ms']:.1f} ms, cpu p50 {full['cpu_p50_ms']:.1f} ms  [prefill {p['prefill']:.1f} + text {p['text']:.1f} + image {p['image']:.1f}"
            f" + encode/decode/prompt {full['other_ms']:.1f}]"
        )
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in sorted({r["model"] for r in rows}):
        for mode, style in (("ar", "o--"), ("dida", "s-")):
            pts = [(r["tokens"], r["p50_ms"]) for r in rows if r["model"] == model and r["mode"] == mode]
            ax.plot(*zip(*pts), style, label=f"{model} {mode.upper()}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image tokens")
    ax.set_ylabel("ms per subgoal image (p50)")
    ax.set_title("AR vs DiDA image decoding")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    import torch

    from emu_guide.paths import artifacts_root

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench-decode: --device cuda asked for but no CUDA GPU is available")
        return 2
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    rows, ratios, models = bench_images(args, device, dtype)
    fulls = []
    if "default" in args.models and args.full_step_repeats > 0:
        fulls = [bench_full_step(args, device, dtype, k) for k in args.full_step_k]
    at256 = next((q for q in ratios if q["model"] == "default" and q["tokens"] == 256), None)
    targets = {}
    if at256:
        targets["dida_32x_fewer_forwards_at_256"] = at256["forward_ratio"] >= 32
        targets["dida_4x_wallclock_at_256_default"] = at256["speedup_p50"] >= 4
    for full in fulls:
        targets[f"full_step_K{full['dida_steps']}_p50_le_100ms"] = full["p50_ms"] <= 100
        targets[f"full_step_K{full['dida_steps']}_cpu_p50_le_100ms"] = full["cpu_p50_ms"] <= 100
    if at256:
        targets["dida_4x_cpu_time_at_256_default"] = at256["speedup_cpu_p50"] >= 4
    result = dict(
        host=dict(
            device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            cpus=os.cpu_count(), torch_threads=args.threads, torch=torch.__version__, dtype=str(dtype),
            loadavg_before=load_before, loadavg_after=os.getloadavg(),
        ),
        settings=dict(dida_steps=args.dida_steps, prompt_tokens=args.prompt_tokens, sizes=args.sizes),
        models=models, images=rows, ratios=ratios, full_step=fulls, targets=targets,
    )  # fmt: skip
    out = Path(args.out) if args.out else artifacts_root() / "bench" / "decode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    _plot(rows, out.with_suffix(".png"))
    print(_table(rows, ratios, fulls))
    print(f"\nload average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} (shared host: other work inflates times)")
    print("targets: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in targets.items()))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
