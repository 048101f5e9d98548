"""The closed loop with the real torch backend on an untrained (random) model directory.

An untrained model writes noise: the loop must parse it to UNKNOWN, never execute it, re-plan,
and stop at the re-plan limit with a report, on the same code path a trained model takes.
"""

from __future__ import annotations

import argparse

import pytest

from planner import demo
from planner.envs import make_backend, make_env
from planner.monitor import MonitorConfig
from planner.report import write_report
from planner.runner import RunnerConfig, run_episode
from sim_envs.seeds import HELDOUT_SEEDS
from sim_envs.table_clear import INSTRUCTIONS
from tests.planner.conftest import make_tiny_model_dir

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # torch import + a model build: ~10 s on an idle 2-core host


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    corpus = [*INSTRUCTIONS, "pick up the red cup", "put the red cup in the rack"]
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"), corpus)


def test_random_model_is_replanned_not_executed(model_dir, tmp_path):
    backend = make_backend("torch", None, model_path=str(model_dir))
    env = make_env("table_clear", resolution=backend.image_size[0])
    config = RunnerConfig(monitor=MonitorConfig(max_replans=2, max_planning_calls=10))
    result = run_episode(env, backend, HELDOUT_SEEDS[0], config)
    env.close()
    assert not result.success and result.backend == "torch"
    assert result.steps, result.stop_reason
    for s in result.steps:
        assert s.outcome in ("failed", "final_rejected")  # noise is never a confirmed step
        assert s.latency_ms["total"] > 0
    # a step that was executed must have parsed to a real goal first
    assert all(s.attempts == 0 or s.goal.get("status") == "ok" for s in result.steps)
    assert "gave up" in result.stop_reason or "limit" in result.stop_reason
    paths = write_report(tmp_path, [result])
    assert paths["metrics"].exists()


def test_demo_with_the_torch_backend(model_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--backend", "torch", "--model-path", str(model_dir), "--decode", "ar",
                              "--out", str(tmp_path), "--time-limit", "20", "--check"])
    assert demo.main(args) == 1  # an untrained model does not clear the table (--check: exit 1)
    out = capsys.readouterr().out
    assert "backend torch" in out and "FAILED" in out
    assert (tmp_path / "plan.txt").exists()


def test_bench_runs_dida_and_ar_side_by_side(model_dir, tmp_path):
    from planner import bench

    report = bench.run_bench(["table_clear"], 1, ["torch"], ["dida", "ar"], 1, tmp_path, model_path=str(model_dir),
                             time_limit=20.0, progress=False)
    assert [(s["backend"], s["decode"]) for s in report["summaries"]] == [("torch", "dida"), ("torch", "ar")]
    assert {e["decode_mode"] for e in report["episodes"]} == {"dida", "ar"}
    assert all(s["success_rate"] == 0.0 and s["latency_ms_p50"] > 0 for s in report["summaries"])
    assert (tmp_path / "bench.json").exists() and (tmp_path / "success_at_k.png").exists()
