"""`emu-guide train` through the real CLI dispatcher."""

from __future__ import annotations

import json

from train_helpers import TINY_LM

from emu_guide.cli import main


def test_cli_trains_with_overrides(tmp_path, capsys):
    rc = main(["train", "--stage", "next_token", "--no-progress", "data.source=synthetic", "data.num_synthetic=10",
               "data.synthetic_grid=2", "data.synthetic_codes=8", TINY_LM, "optim.max_steps=2", "optim.batch_size=2",
               f"checkpoint.dir={tmp_path / 'cli'}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "stage next_token: 2 steps" in out and "held-out:" in out
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["steps"] == 2


def test_cli_reports_a_bad_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stage: next_token\ndata: {source: synthetic}\noptim: {batch_size: -3}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "optim.batch_size" in capsys.readouterr().out
