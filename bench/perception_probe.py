"""Held-out metrics of an LM checkpoint, the perception probe's included: does its reading generalise?

    python bench/perception_probe.py CHECKPOINT_DIR [--samples 400] [--out runs/bench/perception_probe.json]

Runs the stage's own ``evaluate`` (the metrics a training run logs at ``eval.every``) on up to
``--samples`` held-out sequences of the run's data, with the run's ``train_config.json`` (found in
the checkpoint's run directory). With ``perception_aux`` on, ``probe_object_acc`` is the probe's
object head on held-out prompt frames (tokens with an object centred in them named right) and
``probe_empty_as_object`` how often an empty token is given an object; compare with the
training log's ``aux_object_acc`` (the same head on training batches): a large gap means the LM
memorises its scenes instead of reading the codes (docs/training.md, session 7).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an LM checkpoint directory (runs/train/<name>/checkpoints/step-...)")
    parser.add_argument("--samples", type=int, default=400, help="held-out sequences to evaluate")
    parser.add_argument("--out", default="runs/bench/perception_probe.json")
    args = parser.parse_args(argv)

    from finetune_embodied.train import distributed as D
    from finetune_embodied.train.checkpoint import CheckpointError, load_checkpoint
    from finetune_embodied.train.config import ConfigError, load_config
    from finetune_embodied.train.loop import _load_state
    from finetune_embodied.train.stages import make_stage

    ck = Path(args.checkpoint)
    config = ck.parent.parent / "train_config.json"
    if not config.is_file():
        print(f"error: {config} not found (pass a checkpoint inside a run directory)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(str(config), [f"eval.max_samples={args.samples}"])
        loaded = load_checkpoint(ck)
    except (ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    info = D.setup("cpu", "none")
    stage = make_stage(cfg, info)
    model = stage.build_model()
    _load_state(model, loaded["weights"], ck)
    model.eval()
    import torch

    with torch.no_grad():
        metrics = stage.evaluate(model)
    wall = time.perf_counter() - t0
    print(f"held-out metrics of {ck} ({int(metrics.get('samples', 0))} sequences, {wall:.0f} s)")
    for k, v in metrics.items():
        print(f"  {k:28s} {v:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(ck), "wall_s": wall, "metrics": metrics}, indent=2))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
