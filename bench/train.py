"""Training throughput (samples/s) per stage at the default model size, and the time to train the default.

    python bench/train.py [--steps 6] [--json runs/bench/train_throughput.json]

Prints a table and writes JSON. Stage models and batch sizes come from configs/train/<stage>.yaml,
planned steps from configs/train/default_model.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emu_guide.paths import PROJECT_ROOT, artifacts_root
from finetune_embodied.train.bench import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per stage (after 2 warm-up steps)")
    p.add_argument("--configs", default=str(PROJECT_ROOT / "configs" / "train"))
    p.add_argument("--json", default=str(artifacts_root() / "bench" / "train_throughput.json"))
    a = p.parse_args()
    configs = Path(a.configs)
    run(configs, configs / "default_model.yaml", a.steps, Path(a.json))


if __name__ == "__main__":
    main()
