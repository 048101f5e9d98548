"""The user's instruction (`--instruction`): passed to the model, or refused with the unknown words named."""

from __future__ import annotations

import pytest

from emu_guide import cli
from model_runtime.backends.oracle import OracleBackend
from planner.envs import check_user_instruction, make_backend, make_env, supported_instructions
from planner.runner import RunnerConfig, run_episode
from sim_envs.seeds import HELDOUT_SEEDS


def test_supported_instructions_are_the_sims_own_phrasings():
    assert "tidy up the table" in supported_instructions("table_clear")
    assert any("{pairs}" in s for s in supported_instructions("sort_blocks"))
    assert "fold the T-shirt" in supported_instructions("fold_cloth")
    with pytest.raises(ValueError, match="table_clear"):
        supported_instructions("make_tea")


def test_the_users_words_reach_the_model_and_the_episode_record():
    env = make_env("table_clear")
    asked = []

    class RecordingOracleForTest(OracleBackend):
        def next_step(self, frame, instruction, history, options=None):
            asked.append(instruction)
            return super().next_step(frame, instruction, history, options)

    result = run_episode(env, RecordingOracleForTest(env), HELDOUT_SEEDS[3], RunnerConfig(instruction="tidy   up the table"))
    env.close()
    assert result.success and result.instruction == "tidy up the table"
    assert set(asked) == {"tidy up the table"}


@pytest.mark.slow
def test_unknown_words_are_named_with_the_supported_instructions(capsys):
    backend = make_backend("torch", None)
    try:
        assert check_user_instruction(backend, "tidy up the table", "table_clear") is None
        error = check_user_instruction(backend, "wash the elephant", "table_clear")
        assert error is not None and "['wash', 'elephant']" in error and "'clear the table'" in error
        assert check_user_instruction(backend, "  ", "table_clear") == "--instruction is empty"
    finally:
        backend.close()
    assert cli.main(["demo", "--instruction", "wash the elephant", "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (transformers may draw a weight-loading bar before it)
    assert last.startswith("error: ") and "'wash', 'elephant'" in last and "Traceback" not in err
