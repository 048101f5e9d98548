"""Recording throughput (episodes/min) of `emu-guide record` with 1 and 2 worker processes.

    python bench/record_throughput.py [--episodes 12] [--resolution 64] [--workers 1 2]

Prints a table and writes runs/bench/record_throughput.json. Each run records fresh episodes
(no shard reuse) into a temporary folder; the timing covers the recording (expert + sim + render +
shard write) and, separately, consolidation into the LeRobot v3 files (video encoding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from emu_guide.paths import artifacts_root
from finetune_embodied.record import RecordConfig, record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--mistake-rate", type=float, default=0.2)
    p.add_argument("--out", default=str(artifacts_root() / "bench" / "record_throughput.json"))
    a = p.parse_args()
    rows = []
    for w in a.workers:
        tmp = Path(tempfile.mkdtemp(prefix="record_bench_"))
        try:
            cfg = RecordConfig(out=str(tmp / "ds"), episodes_per_task=a.episodes, seed_offset=1000,
                               mistake_rate=a.mistake_rate, resolution=a.resolution, workers=w)
            t0 = time.perf_counter()
            s = record(cfg, progress=False)
            total = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append({"workers": w, "episodes": s["episodes_recorded_now"], "frames": s["frames_recorded_now"],
                     "record_s": round(s["record_seconds"], 2), "consolidate_s": round(total - s["record_seconds"], 2),
                     "episodes_per_min": round(s["episodes_per_min"], 1),
                     "episodes_per_min_incl_consolidation": round(60 * s["episodes_recorded_now"] / total, 1)})
    print(f"{'workers':>7} {'episodes':>8} {'frames':>7} {'record s':>9} {'consol. s':>9} {'ep/min':>7} {'ep/min all':>10}")
    for r in rows:
        print(f"{r['workers']:>7} {r['episodes']:>8} {r['frames']:>7} {r['record_s']:>9} {r['consolidate_s']:>9} "
              f"{r['episodes_per_min']:>7} {r['episodes_per_min_incl_consolidation']:>10}")
    result = {"task": "table_clear", "resolution": a.resolution, "mistake_rate": a.mistake_rate, "rows": rows,
              "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "command": f"python bench/record_throughput.py --episodes {a.episodes} --resolution {a.resolution}"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
