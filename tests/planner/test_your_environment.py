"""Bring your own environment: an outside env (a plain Gymnasium env + a wrapper adapter, not
deep-copyable, with verbs of its own) through the same loop, demo and bench as ours."""

from __future__ import annotations

import copy
import json

import pytest

from emu_guide import cli
from emu_guide.env_protocol import EnvProtocolError, guidance_env
from model_runtime.backends.oracle import OracleBackend
from planner.envs import env_id, make_env
from planner.parse import Vocabulary, parse
from planner.runner import run_episode
from sim_envs.seeds import HELDOUT_SEEDS
from tests.planner.envs_for_test.button_panel import ButtonPanelEnv, GuidedButtonPanel

ENV = "tests.planner.envs_for_test.button_panel:make"


def test_the_protocol_is_found_through_wrappers_and_missing_members_are_named():
    env = make_env(ENV)
    assert isinstance(guidance_env(env), GuidedButtonPanel)
    assert isinstance(guidance_env(GuidedButtonPanel(ButtonPanelEnv())), GuidedButtonPanel)
    with pytest.raises(EnvProtocolError, match="no object in the wrapper chain .* has execute_skill"):
        guidance_env(ButtonPanelEnv())
    with pytest.raises(ValueError, match="has no object in the wrapper chain|execute_skill"):
        make_env("tests.planner.envs_for_test.button_panel:ButtonPanelEnv")
    with pytest.raises(ValueError, match="cannot load the environment"):
        make_env("tests.planner.envs_for_test.nope:make")
    with pytest.raises(ValueError, match="module:callable"):
        env_id("not_a_task")
    with pytest.raises(TypeError):
        copy.deepcopy(env.unwrapped)  # like a MuJoCo env: the oracle must do without copies


def test_the_parser_learns_the_environments_verbs():
    env = make_env(ENV)
    env.reset(seed=HELDOUT_SEEDS[0])
    vocab = Vocabulary.from_env(env)
    assert vocab.skills["push down"] == "press"
    goal = parse("Push down the red button.", vocab).to_goal()
    assert (goal.verb, goal.object, goal.status.value) == ("press", "red button", "ok")
    assert parse("pull the lever", vocab).to_goal().verb == "pull"
    assert parse("press the red button", Vocabulary()).status.value == "unknown"  # not a built-in verb
    with pytest.raises(ValueError, match="one lowercase word"):
        Vocabulary(skills={"press": "Press It"})


def test_an_outside_env_runs_through_the_loop_with_the_oracle():
    env = make_env(ENV)
    result = run_episode(env, OracleBackend(env), HELDOUT_SEEDS[1])
    assert result.success and result.task == "button_panel", result.stop_reason
    assert [s.goal["verb"] for s in result.steps[:-1]] == ["press", "press", "press", "pull"]
    assert all(s.goal_correct for s in result.steps)
    oracle = OracleBackend(env)
    run_episode(env, oracle, HELDOUT_SEEDS[2])
    assert not oracle.copyable and "TypeError" in oracle.copy_error  # it said why it fell back


def test_bench_takes_an_environment_by_import_path(tmp_path, capsys):
    out = tmp_path / "bench"
    code = cli.main(["bench", "--tasks", ENV, "--episodes", "2", "--backend", "oracle", "--workers", "2",
                     "--out", str(out), "--sheets", "none"])  # workers import the env themselves
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "bench.json").read_text())
    assert [s["success_rate"] for s in report["summaries"]] == [1.0]
    assert {e["task"] for e in report["episodes"]} == {ENV}
