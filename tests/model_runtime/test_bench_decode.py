"""bench-decode runs end to end on tiny settings and reports what it measured (no timing asserts)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_decode_smoke(tmp_path, capsys):
    from model_runtime import bench_decode

    parser = argparse.ArgumentParser()
    bench_decode.add_arguments(parser)
    out = tmp_path / "decode.json"
    args = parser.parse_args(["--models", "default", "--sizes", "4", "16", "--repeats", "1", "--dida-steps", "2",
                              "--full-step-repeats", "1", "--full-step-k", "2", "--prompt-tokens", "20",
                              "--out", str(out)])  # fmt: skip
    assert bench_decode.main(args) == 0
    doc = json.loads(out.read_text())
    fwd = {(r["tokens"], r["mode"]): r["forwards"] for r in doc["images"]}
    assert fwd == {(4, "ar"): 4, (4, "dida"): 2, (16, "ar"): 16, (16, "dida"): 2}
    assert doc["ratios"][1]["forward_ratio"] == 8.0
    full = doc["full_step"][0]
    assert full["forwards"]["image"] == 2 and full["grid"] == [12, 12] and full["mean_text_tokens"] == 10
    assert out.with_suffix(".png").is_file()
    assert "full next step" in capsys.readouterr().out
