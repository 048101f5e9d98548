"""Training throughput per stage (samples/s) for the default model size, and the time to train it.

Runs a few real optimizer steps of each stage through the one training loop on generated data of
the default shapes (96x96 frames for the tokenizer; 12x12-code images and a 1000-code vocabulary
for the language-model stages, as the FSQ default produces) and times them after a warm-up.

    python bench/train.py                    # all stages, default sizes, prints a table, writes JSON
    emu-guide train --bench --config configs/train/next_token.yaml   # one stage as configured
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from finetune_embodied.train.config import TrainConfig, load_config

# Stage -> overrides that give default-shaped synthetic data (no dataset needed to measure speed).
BENCH_DATA = {
    "tokenizer": ["data.source=synthetic", "data.num_synthetic=64", "data.image_size=96"],
    "next_token": ["data.source=synthetic", "data.num_synthetic=60", "data.synthetic_grid=12", "data.synthetic_codes=1000"],
    "dida": ["data.source=synthetic", "data.num_synthetic=60", "data.synthetic_grid=12", "data.synthetic_codes=1000"],
}


def bench_stage(cfg: TrainConfig, steps: int = 6, warmup: int = 2, out_dir: Path | None = None) -> dict[str, Any]:
    """samples/s of ``cfg``'s stage over ``steps`` optimizer steps after ``warmup`` steps."""
    from emu_guide.paths import artifacts_root
    from finetune_embodied.train.loop import train

    out_dir = out_dir or artifacts_root() / "bench" / "train" / cfg.stage
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)  # a fresh run directory: no checkpoint of an earlier bench is resumed
    base = cfg.to_dict()
    base["checkpoint"].update({"dir": str(out_dir), "resume": "never", "every": 10**9})
    base["eval"]["every"] = 0
    base["optim"]["max_steps"] = warmup + steps
    base["log_every"] = 1
    from finetune_embodied.train.config import config_from_dict

    run_cfg = config_from_dict(base)
    t0 = time.perf_counter()
    train(run_cfg, stop_after_step=warmup, progress=False)  # model build + warm-up steps (not timed)
    setup_s = time.perf_counter() - t0
    res = train(config_from_dict({**base, "checkpoint": {**base["checkpoint"], "resume": "auto"}}), progress=False)
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    # Per-step rates from the log (log_every=1): the timed steps only, without the final eval/save.
    rates = [r["samples_per_s"] for r in rows if r["split"] == "train" and r["step"] > warmup]
    rate = float(len(rates) / sum(1.0 / r for r in rates)) if rates else res.samples_per_s  # harmonic mean
    cpu = [r["cpu_s_per_step"] for r in rows if r["split"] == "train" and r["step"] > warmup and "cpu_s_per_step" in r]
    cpu_s = sum(cpu) / len(cpu) if cpu else None
    n_params = None
    if res.model is not None:
        n_params = sum(p.numel() for p in {id(p): p for p in res.model.parameters()}.values())
    out = {
        "stage": cfg.stage,
        "batch_size": cfg.optim.batch_size,
        "samples_per_s": rate,
        "s_per_step": cfg.optim.batch_size / rate if rate else None,
        "timed_steps": len(rates),
        # CPU seconds per step over all threads; / torch threads = the wall time of an idle machine
        # if the threads scale perfectly (an optimistic bound, independent of other jobs' load).
        "cpu_s_per_step": cpu_s,
        "idle_machine_s_per_step_est": cpu_s / torch.get_num_threads() if cpu_s else None,
        "setup_and_warmup_s": setup_s,
        "params": n_params,
        "model": run_cfg.model,
    }
    print(f"{cfg.stage:<11} batch {cfg.optim.batch_size:>3}  {rate:8.2f} samples/s  {out['s_per_step']:.3f} s/step")
    return out


def run(configs_dir: Path, pipeline: Path, steps: int, out_json: Path) -> dict[str, Any]:
    """Bench every stage with its configs/train/<stage>.yaml model and batch; estimate the full run."""
    import yaml

    pipe = yaml.safe_load(pipeline.read_text()) if pipeline.is_file() else {}
    results = []
    total_s = total_idle = 0.0
    for stage in ("tokenizer", "next_token", "dida"):
        cfg = load_config(configs_dir / f"{stage}.yaml", BENCH_DATA[stage] + ["device=cpu"])
        r = bench_stage(cfg, steps=steps)
        planned = int((pipe.get(stage) or {}).get("optim.max_steps", cfg.optim.max_steps))
        r["planned_steps"] = planned
        r["estimated_train_s"] = planned * r["s_per_step"]
        r["estimated_train_s_idle"] = planned * (r["idle_machine_s_per_step_est"] or r["s_per_step"])
        total_s += r["estimated_train_s"]
        total_idle += r["estimated_train_s_idle"]
        results.append(r)
    report = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__,
                    # The machine may be shared: a load above the core count means the numbers are low.
                    "load_avg_1_5_15_at_end": list(os.getloadavg())},
        "stages": results,
        "estimated_total_train_s": total_s,
        "estimated_total_train_h": total_s / 3600,
        "estimated_total_train_h_idle_machine": total_idle / 3600,
        "note": "time to train = planned steps x measured s/step per stage (excludes recording, evaluation, checkpoints)",
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2))
    print()
    print("| stage | batch | samples/s | s/step | CPU s/step | planned steps | est. time (measured) | est. time (idle machine) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['stage']} | {r['batch_size']} | {r['samples_per_s']:.2f} | {r['s_per_step']:.2f} |"
              f" {r['cpu_s_per_step'] or float('nan'):.2f} | {r['planned_steps']} | {r['estimated_train_s'] / 60:.0f} min |"
              f" {r['estimated_train_s_idle'] / 60:.0f} min |")
    print(f"| total | | | | | | {total_s / 60:.0f} min | {total_idle / 60:.0f} min |")
    print(f"load average at the end: {os.getloadavg()}")
    print(f"\nJSON: {out_json}")
    return report
