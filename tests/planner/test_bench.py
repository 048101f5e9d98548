"""``emu-guide bench``: episodes over worker processes, JSON, plots and contact sheets."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from planner import bench
from sim_envs.seeds import HELDOUT_SEEDS


def test_bench_two_episodes_two_workers(tmp_path):
    report = bench.run_bench(["sort_blocks"], 2, ["oracle"], ["dida"], 2, tmp_path, progress=False)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(report))
    (summary,) = data["summaries"]
    assert summary["episodes"] == 2 and summary["success_rate"] == 1.0
    assert {e["seed"] for e in data["episodes"]} == set(HELDOUT_SEEDS[:2])
    for name in ("success_at_k.png", "latency_hist.png"):
        with Image.open(tmp_path / name) as im:
            im.verify()
    assert len(list((tmp_path / "sheets").glob("*.png"))) == 2  # the first 2 of the configuration
    assert "success" in bench.format_table(data["summaries"])
    with pytest.raises(ValueError, match="unknown task"):
        bench.run_bench(["juggling"], 1, ["oracle"], ["dida"], 1, tmp_path, progress=False)


def test_bench_records_grounded_decoding(tmp_path):
    report = bench.run_bench(["table_clear"], 1, ["oracle"], ["dida"], 1, tmp_path, progress=False,
                             sheets="none", grounded_decoding=True)
    assert report["text"].startswith("grounded decoding") and report["summaries"][0]["success_rate"] == 1.0
    free = bench.run_bench(["table_clear"], 1, ["oracle"], ["dida"], 1, tmp_path / "free", progress=False, sheets="none")
    assert free["text"] == "free"
