"""Tokenizer benchmark: encode/decode latency of one frame, and a quick train-then-evaluate run.

    python -m finetune_embodied.tokenizer_bench speed [--tokenizer DIR]
    python -m finetune_embodied.tokenizer_bench train-eval --steps 1500 --episodes 40
    python -m finetune_embodied.tokenizer_bench eval --tokenizer DIR

Both print a table and write JSON (and, for train-eval, a PNG of reconstructions) under
``runs/bench/``. train-eval trains on ``train``-split sim frames and scores ``heldout`` frames.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from emu_guide.paths import artifacts_root
from model_runtime.tokenizers.base import VisionTokenizer
from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer


def _percentiles(xs: list[float]) -> tuple[float, float]:
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 95))


def measure_speed(tok: VisionTokenizer, threads: int, repeats: int = 50) -> dict[str, float]:
    """p50/p95 milliseconds to encode and decode one frame with ``threads`` torch threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        h, w = tok.image_size or (96, 96)
        frame = np.random.default_rng(0).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        for _ in range(5):
            tok.decode(tok.encode(frame))
        enc, dec = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            codes = tok.encode(frame)
            t1 = time.perf_counter()
            tok.decode(codes)
            t2 = time.perf_counter()
            enc.append(1000 * (t1 - t0))
            dec.append(1000 * (t2 - t1))
    finally:
        torch.set_num_threads(old)
    (e50, e95), (d50, d95) = _percentiles(enc), _percentiles(dec)
    both = [a + b for a, b in zip(enc, dec)]
    return {"threads": threads, "encode_p50_ms": e50, "encode_p95_ms": e95, "decode_p50_ms": d50,
            "decode_p95_ms": d95, "total_p50_ms": _percentiles(both)[0], "total_p95_ms": _percentiles(both)[1]}  # fmt: skip


def _write(name: str, doc: dict) -> Path:
    out = artifacts_root() / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out


def cmd_speed(args: argparse.Namespace) -> int:
    if args.tokenizer:
        from model_runtime.tokenizers.registry import load_vision_tokenizer

        tok = load_vision_tokenizer(args.tokenizer)
    else:
        tok = FSQTokenizer.from_config(FSQConfig())
    params = sum(p.numel() for p in tok.model.parameters())
    rows = [measure_speed(tok, t, args.repeats) for t in (1, torch.get_num_threads())]
    print(f"{tok.name} tokenizer, {params / 1e6:.2f} M params, frame {tok.image_size}, grid {tok.code_grid()}")
    print(
        f"{'threads':>7} {'enc p50':>8} {'enc p95':>8} {'dec p50':>8} {'dec p95':>8} {'total p50':>9} {'total p95':>9}"
    )
    for r in rows:
        print(f"{r['threads']:>7} {r['encode_p50_ms']:>8.2f} {r['encode_p95_ms']:>8.2f} {r['decode_p50_ms']:>8.2f}"
              f" {r['decode_p95_ms']:>8.2f} {r['total_p50_ms']:>9.2f} {r['total_p95_ms']:>9.2f}")  # fmt: skip
    out = _write("tokenizer_speed.json", {"tokenizer": tok.name, "params": params, "rows": rows})
    print(f"wrote {out}")
    return 0


def cmd_train_eval(args: argparse.Namespace) -> int:
    from finetune_embodied.tokenizer_eval import evaluate_tokenizer, save_reconstruction_png, sim_frames
    from model_runtime.tokenizers.train import train_fsq_tokenizer

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train = sim_frames("train", episodes_per_env=args.episodes)
    held = sim_frames("heldout", episodes_per_env=args.heldout_episodes)
    print(f"{len(train.frames)} train frames, {len(held.frames)} held-out frames ({time.perf_counter() - t0:.0f} s)")
    tok, log = train_fsq_tokenizer(train.frames, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    out_dir = artifacts_root() / "tokenizers" / "fsq_quick"
    tok.save(out_dir)
    result, recon = evaluate_tokenizer(tok, held, return_reconstructions=True)
    png = save_reconstruction_png(held.frames[:: max(1, len(held.frames) // 12)], recon[:: max(1, len(recon) // 12)],
                                  artifacts_root() / "bench" / "tokenizer_reconstructions.png")  # fmt: skip
    r = result.to_dict()
    print(f"{'metric':<22} value")
    for k, v in r.items():
        print(f"{k:<22} {v if not isinstance(v, float) else round(v, 4)}")
    doc = {"steps": args.steps, "batch_size": args.batch_size, "train_frames": len(train.frames),
           "final_train_loss": log[-1], "heldout": r, "tokenizer_dir": str(out_dir), "png": str(png),
           "wall_s": time.perf_counter() - t0}  # fmt: skip
    print(f"wrote {_write('tokenizer_train_eval.json', doc)}, {png}, {out_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from finetune_embodied.tokenizer_eval import evaluate_tokenizer, save_reconstruction_png, sim_frames
    from model_runtime.tokenizers.registry import load_vision_tokenizer

    torch.set_num_threads(args.threads)
    tok = load_vision_tokenizer(args.tokenizer)
    held = sim_frames("heldout", episodes_per_env=args.heldout_episodes)
    result, recon = evaluate_tokenizer(tok, held, return_reconstructions=True)
    step = max(1, len(recon) // 12)
    png = save_reconstruction_png(held.frames[::step], recon[::step], artifacts_root() / "bench" / "tokenizer_eval.png")
    r = result.to_dict()
    print(f"{'metric':<22} value")
    for k, v in r.items():
        print(f"{k:<22} {v if not isinstance(v, float) else round(v, 4)}")
    print(f"wrote {_write('tokenizer_eval.json', {'tokenizer_dir': str(args.tokenizer), 'heldout': r})}, {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed", help="encode/decode latency of one frame")
    sp.add_argument("--tokenizer", help="a saved tokenizer directory (default: a fresh FSQ)")
    sp.add_argument("--repeats", type=int, default=50)
    te = sub.add_parser("train-eval", help="train an FSQ tokenizer briefly on train seeds, score held-out frames")
    te.add_argument("--steps", type=int, default=1500)
    te.add_argument("--batch-size", type=int, default=32)
    te.add_argument("--lr", type=float, default=2e-3)
    te.add_argument("--episodes", type=int, default=40, help="train episodes per task")
    te.add_argument("--heldout-episodes", type=int, default=8, help="held-out episodes per task")
    te.add_argument("--threads", type=int, default=1)
    ev = sub.add_parser("eval", help="score a saved tokenizer on held-out sim frames")
    ev.add_argument("--tokenizer", required=True, help="a saved tokenizer directory")
    ev.add_argument("--heldout-episodes", type=int, default=8, help="held-out episodes per task")
    ev.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return {"speed": cmd_speed, "train-eval": cmd_train_eval, "eval": cmd_eval}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
