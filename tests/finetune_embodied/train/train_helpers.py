"""Tiny configs shared by the training tests (a 64-wide, 2-layer Qwen3 on synthetic sequences)."""

from __future__ import annotations

from finetune_embodied.train.config import TrainConfig, load_config

TINY_LM = "model={hidden_size: 64, num_layers: 2, num_heads: 2, num_kv_heads: 1, head_dim: 32, intermediate_size: 128}"


def tiny_lm_config(run_dir, *overrides: str) -> TrainConfig:
    base = [
        "stage=next_token",
        "data.source=synthetic",
        "data.num_synthetic=40",
        "data.synthetic_grid=3",
        "data.synthetic_codes=16",
        TINY_LM,
        "optim.batch_size=4",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "optim.max_steps=12",
        "eval.every=0",
        "eval.max_samples=5",
        "log_every=2",
        "checkpoint.every=4",
        f"checkpoint.dir={run_dir}",
    ]
    return load_config(None, base + list(overrides))

