"""Simulation benchmark: steps/s and render ms per env at 64/96/128 px, expert success on held-out seeds.

    python bench/sim.py [--resolutions 64 96 128] [--steps 3000] [--success-seeds 100]

Same as ``emu-guide bench-sim`` (sim_envs/bench.py): prints tables, writes runs/bench/sim.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim_envs import bench  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="sim_envs speed and expert-success benchmark")
    bench.add_arguments(parser)
    raise SystemExit(bench.main(parser.parse_args()))
