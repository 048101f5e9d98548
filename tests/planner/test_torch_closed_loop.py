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
    import json

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--backend", "torch", "--model-path", str(model_dir), "--decode", "ar",
                              "--out", str(tmp_path), "--time-limit", "20", "--check"])
    assert demo.main(args) == 1  # an untrained model does not clear the table (--check: exit 1)
    out = capsys.readouterr().out
    assert "backend torch" in out and "FAILED" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    episode = metrics["episodes"][0] if "episodes" in metrics else metrics
    steps = episode["steps"]
    # what was printed is what was recorded: one "[n] sentence" line per planning call, in order
    printed = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert printed == [s["text"] for s in steps] and len(steps) == episode["planning_calls"]
    assert episode["success"] is False and episode["decode_mode"] == "ar" and episode["stop_reason"]
    assert all(s["outcome"] in ("failed", "final_rejected") for s in steps)  # noise is never confirmed
    plan = (tmp_path / "plan.txt").read_text()
    assert all(s["text"] in plan for s in steps)


def test_bench_runs_dida_and_ar_side_by_side(model_dir, tmp_path):
    from planner import bench
    from planner.metrics import aggregate

    report = bench.run_bench(["table_clear"], 2, ["torch"], ["dida", "ar"], 1, tmp_path, model_path=str(model_dir),
                             time_limit=20.0, progress=False)
    assert [(s["backend"], s["decode"]) for s in report["summaries"]] == [("torch", "dida"), ("torch", "ar")]
    by_mode = {m: [e for e in report["episodes"] if e["decode_mode"] == m] for m in ("dida", "ar")}
    assert sorted(e["seed"] for e in by_mode["dida"]) == sorted(e["seed"] for e in by_mode["ar"]) == list(HELDOUT_SEEDS[:2])
    for summary in report["summaries"]:
        mine = aggregate(by_mode[summary["decode"]])  # each summary is aggregate() of its own episodes
        for key in ("success_rate", "latency_ms_p50", "latency_ms_p95", "replans_per_episode", "episodes"):
            assert summary[key] == pytest.approx(mine[key], nan_ok=True), key
        assert summary["success_rate"] == 0.0 and summary["latency_ms_p50"] > 0
    assert (tmp_path / "bench.json").exists() and (tmp_path / "success_at_k.png").exists()


class OracleStepsTinyModelVerifier:
    """Test double for the loop's wiring: the oracle's (ground-truth) steps, so steps get executed, and
    a real untrained step verifier in a torch model directory (its probabilities are noise, its path
    is the real one)."""

    def __init__(self, oracle, checker) -> None:
        self.oracle, self.checker = oracle, checker
        self.name, self.model_id, self.image_size = "oracle+verifier", "test", checker.image_size
        self.checks = True
        self.asked: list[str] = []

    def next_step(self, frame, instruction, history, options=None):
        return self.oracle.next_step(frame, instruction, history, options)

    def check_step(self, before, after, step_text):
        self.asked.append(step_text)
        return self.checker.check_step(before, after, step_text)

    def close(self) -> None:
        self.oracle.close()


def test_without_the_checker_the_models_step_verifier_decides(tmp_path):
    from model_runtime.backends.base import load_backend

    env = make_env("table_clear", resolution=32)
    env.reset(seed=HELDOUT_SEEDS[0])
    corpus = [*INSTRUCTIONS, *(s.text for s in env.unwrapped.ground_truth_plan())]  # the sentences it is asked about
    checker = make_backend("torch", None, model_path=str(make_tiny_model_dir(tmp_path / "m", corpus, verifier=True)))
    backend = OracleStepsTinyModelVerifier(load_backend("oracle", env=env), checker)
    config = RunnerConfig(use_checker=False, monitor=MonitorConfig(max_replans=1, max_planning_calls=6))
    result = run_episode(env, backend, HELDOUT_SEEDS[0], config)
    env.close()
    verified = [s for s in result.steps if s.verification is not None]
    assert verified and len(backend.asked) == sum(s.attempts for s in verified)
    for s in verified:  # asked about the step's own sentence; decided by the verifier alone (no checker)
        frames = s.verification["frames"]
        assert s.text in backend.asked and s.verification["decided_by"] == "check" and frames["by"] == "check"
        assert 0.0 < frames["p_happened"] < 1.0 and frames["done"] == (frames["p_happened"] >= 0.5)
        assert s.latency_ms["verify"] == pytest.approx(frames["check_ms"])
    plan = write_report(tmp_path / "report", [result])["plan"].read_text()
    assert "frames (check): " in plan and ": the step verifier: the step" in plan
