"""``emu-guide train``: one training loop; the stage (tokenizer / next_token / dida) comes from the config.

    emu-guide train --config configs/train/next_token.yaml optim.max_steps=500 data.path=runs/data/sim
    torchrun --nproc_per_node 2 -m finetune_embodied.train --config ...   # DDP (gloo on CPU, NCCL on GPU)

Overrides are ``section.key=value`` (value parsed as YAML). A run resumes from the latest
checkpoint in its run directory unless ``checkpoint.resume=never``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON training config (configs/train/*.yaml)")
    parser.add_argument("--stage", choices=["tokenizer", "next_token", "dida"], help="shortcut for stage=...")
    parser.add_argument("--bench", action="store_true",
                        help="measure training throughput (samples/s) of the configured stage and write JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3")


def main(args: argparse.Namespace) -> int:
    from finetune_embodied.train.config import ConfigError, load_config

    overrides = list(args.overrides)
    if args.stage:
        overrides.insert(0, f"stage={args.stage}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"emu-guide train: invalid config: {exc}")
        return 2
    if args.bench:
        import json

        from emu_guide.paths import artifacts_root
        from finetune_embodied.train.bench import bench_stage

        result = bench_stage(cfg)
        out = artifacts_root() / "bench" / f"train_{cfg.stage}.json"
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"JSON: {out}")
        return 0
    import os

    from finetune_embodied.train.loop import train

    try:
        result = train(cfg, progress=not args.no_progress)
    except ValueError as exc:  # DatasetError, LabelError and the stages' data checks: one line naming the problem
        print(f"emu-guide train: {exc}")
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    print(f"stage {cfg.stage}: {result.steps} steps, {result.samples_per_s:.1f} samples/s, checkpoint {result.checkpoint}")
    if result.final_eval:
        print("held-out: " + ", ".join(f"{k}={v:.4g}" for k, v in result.final_eval.items()))
    print(f"metrics: {result.run_dir / 'metrics.jsonl'}  curves: {result.run_dir / 'loss_curves.png'}")
    return 0
