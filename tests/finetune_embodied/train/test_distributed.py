"""The same command under torchrun: 2 CPU processes, gloo, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_LM, tiny_lm_config

from finetune_embodied.train.checkpoint import load_checkpoint
from finetune_embodied.train.loop import train

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_global_batch(tmp_path):
    common = [f"{TINY_LM}", "optim.max_steps=4", "checkpoint.every=4", "eval.every=0"]
    ddp_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "finetune_embodied.train", "--no-progress",
        "stage=next_token", "data.source=synthetic", "data.num_synthetic=40", "data.synthetic_grid=3",
        "data.synthetic_codes=16", "optim.batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=2",
        "eval.max_samples=5", "log_every=2", f"checkpoint.dir={ddp_dir}", *common,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((ddp_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks ended with identical weights

    # One process with the global batch (2 x 4) sees the same samples and the same token-weighted
    # loss, so it must reach the same weights (up to float summation order).
    single = train(tiny_lm_config(tmp_path / "single", "optim.batch_size=8", *common), progress=False)
    w_ddp = load_checkpoint(ddp_dir / "checkpoints" / "step-00000004")["weights"]
    w_one = load_checkpoint(single.checkpoint)["weights"]
    worst = max(float((w_ddp[k] - w_one[k]).abs().max()) for k in w_one)
    assert worst < 1e-5, worst
    # ...and a run with only the per-rank batch (4) differs: the test can tell the two apart.
    half = train(tiny_lm_config(tmp_path / "half", "optim.batch_size=4", *common), progress=False)
    w_half = load_checkpoint(half.checkpoint)["weights"]
    assert max(float((w_ddp[k] - w_half[k]).abs().max()) for k in w_one) > 1e-4
    assert torch.isfinite(torch.cat([v.flatten() for v in w_ddp.values()])).all()
