"""The visual report and the demo/bench commands write what they promise, readable and valid."""

from __future__ import annotations

import argparse
import json

import av
import numpy as np
import pytest
from PIL import Image

from model_runtime.backends.oracle import OracleBackend
from planner import demo
from planner.envs import make_env, resolve_backend
from planner.metrics import aggregate, success_at_k
from planner.report import write_report
from planner.runner import run_episode
from sim_envs.seeds import HELDOUT_SEEDS


@pytest.fixture(scope="module")
def episode():
    env = make_env("sort_blocks")
    result = run_episode(env, OracleBackend(env), HELDOUT_SEEDS[2])
    env.close()
    return result


def test_report_files_are_valid(episode, tmp_path):
    paths = write_report(tmp_path, [episode], summary=aggregate([episode.to_dict()]), video=True)
    plan = paths["plan"].read_text()
    assert episode.instruction in plan and "SUCCESS" in plan
    for s in episode.steps:
        assert s.text in plan
    sheet_path = next(p for k, p in paths.items() if k.startswith("sheet:"))
    with Image.open(sheet_path) as im:
        im.verify()
    sheet = np.asarray(Image.open(sheet_path))
    assert sheet.shape[0] > 200 * len(episode.steps) and sheet.shape[2] == 3
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["summary"]["success_rate"] == 1.0
    assert metrics["episodes"][0]["steps"][0]["text"] == episode.steps[0].text
    assert metrics["episodes"][0]["events"][0]["kind"] == "start"
    video = next(p for k, p in paths.items() if k.startswith("video:"))
    with av.open(str(video)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == 4 * len(episode.steps)
    with pytest.raises(ValueError, match="no episodes"):
        write_report(tmp_path, [])


def test_success_at_k_is_calvin_style():
    assert success_at_k([0, 1, 3, 3], 3) == [0.75, 0.5, 0.5]
    assert success_at_k([], 2) == [0.0, 0.0]
    # plans of different lengths: a 2-step plan done in full is not a failure at k = 3
    assert success_at_k([2, 3, 1], 3, lengths=[2, 4, 4]) == [1.0, 2 / 3, 0.5]
    with pytest.raises(ValueError, match="lengths"):
        success_at_k([1, 2], 2, lengths=[2])


def test_demo_command_runs_an_episode(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--backend", "oracle", "--task", "sort_blocks", "--seed", str(HELDOUT_SEEDS[4]),
                              "--out", str(tmp_path)])
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "SUCCESS" in out and "goal: pick" in out and "ms" in out
    assert (tmp_path / "plan.txt").exists() and (tmp_path / "metrics.json").exists()
    assert list(tmp_path.glob("contact_sheet_*.png"))
    bad = parser.parse_args(["--backend", "oracle", "--seed", "3", "--out", str(tmp_path)])
    assert demo.main(bad) == 2  # a training seed is refused
    assert "held-out" in capsys.readouterr().err


def test_auto_backend_falls_back_to_the_oracle_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setattr("planner.envs.shipped_model_dir", lambda: tmp_path)  # an empty model dir
    name, notice = resolve_backend("auto")
    assert name == "oracle" and "NOTICE" in notice and "ORACLE" in notice
    assert resolve_backend("torch") == ("torch", "")


def test_planner_never_imports_rclpy_nor_torch_for_the_oracle():
    import subprocess
    import sys

    code = ("import sys, importlib; [importlib.import_module('planner.' + m) for m in "
            "('parse', 'grounding', 'executor', 'monitor', 'runner', 'metrics', 'report', 'demo', 'bench', 'envs')]; "
            "print('rclpy' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
