"""bench/destination_probe.py: the bins the shipped LM reads for SortBlocks place steps."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def test_the_probe_asks_every_place_step_of_sort_scenes_and_scores_its_bin():
    from bench.destination_probe import probe, summarise
    from planner.envs import make_env
    from sim_envs.seeds import HELDOUT_SEEDS

    result = probe(None, scenes=2, seed_offset=0)
    cases = result["cases"]
    env = make_env("sort_blocks")
    expected = []
    for seed in sorted({c["seed"] for c in cases}):
        env.reset(seed=seed)
        assert env.unwrapped.mode == "sort" and seed in HELDOUT_SEEDS
        expected += [(seed, s.text, s.goal.target.split()[0]) for s in env.unwrapped.ground_truth_plan() if s.goal.verb == "place"]
    env.close()
    assert [(c["seed"], c["step"], c["true"]) for c in cases] == expected  # each place step once, in plan order
    assert all(c["said"] in ("left", "middle", "right") and sum(c["p"].values()) == pytest.approx(1.0, abs=1e-3)
               and max(c["p"], key=c["p"].get) == c["said"] for c in cases)
    summary = summarise(cases)
    assert summary["all"]["steps"] == len(cases) == summary["2 bins"]["steps"] + summary["3 bins"]["steps"]
    assert summary["all"]["accuracy"] == pytest.approx(sum(c["said"] == c["true"] for c in cases) / len(cases), abs=1e-3)
    assert sum(summary["confusion"].values()) == len(cases)
