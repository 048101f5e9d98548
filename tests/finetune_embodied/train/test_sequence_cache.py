"""The LM stages' sequence cache: the second stage on the same data reuses the first one's sequences."""

from __future__ import annotations

import numpy as np
from test_train_bad_data import _dataset, _tok_cfg

from finetune_embodied.train.checkpoint import latest_checkpoint
from finetune_embodied.train.config import load_config
from finetune_embodied.train.loop import train
from finetune_embodied.train.stages.lm_data import dataset_sequences


def _lm_cfg(tmp_path, ds, tok, *extra):
    return load_config(None, [
        "stage=next_token", f"data.path={ds}", f"tokenizer={tok}", f"checkpoint.dir={tmp_path / 'lm'}", *extra,
    ])


def test_second_read_comes_from_the_cache_and_settings_change_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    ds = _dataset(tmp_path / "ds", n_episodes=2)
    train(_tok_cfg(tmp_path, ds), progress=False)
    tok = latest_checkpoint(tmp_path / "run" / "checkpoints")

    _, _, first, groups, _ = dataset_sequences(_lm_cfg(tmp_path, ds, tok), None)
    assert len(list((tmp_path / "runs" / "cache" / "sequences").glob("*.pkl"))) == 1
    capsys.readouterr()
    _, _, again, groups2, _ = dataset_sequences(_lm_cfg(tmp_path, ds, tok), None)
    assert "from the cache" in capsys.readouterr().out
    assert groups2 == groups and len(again) == len(first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.loss_weights, b.loss_weights)
        assert a.image_spans == b.image_spans and a.kind == b.kind

    # Other sampling settings: a different key, a fresh build with a different number of sequences.
    _, _, fewer, _, _ = dataset_sequences(_lm_cfg(tmp_path, ds, tok, "data.mid_samples_per_step=0"), None)
    assert "from the cache" not in capsys.readouterr().out
    assert 0 < len(fewer) < len(first)
    assert len(list((tmp_path / "runs" / "cache" / "sequences").glob("*.pkl"))) == 2


TINY = "model={hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, head_dim: 16, intermediate_size: 64}"
FAST = ["optim.max_steps=2", "optim.batch_size=2", "eval.max_samples=2", "data.heldout_fraction=0.5"]


def _tiny_lm_on_a_dataset(tmp_path, monkeypatch, *common):
    """A 2-episode dataset and a trained toy tokenizer -> lm(name, *overrides): a tiny next-token config."""
    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    ds = _dataset(tmp_path / "ds", n_episodes=2)
    train(_tok_cfg(tmp_path, ds), progress=False)
    tok = latest_checkpoint(tmp_path / "run" / "checkpoints")

    def lm(name, *extra):
        return load_config(None, ["stage=next_token", f"data.path={ds}", f"tokenizer={tok}", TINY, *FAST, *common,
                                  f"checkpoint.dir={tmp_path / name}", *extra])

    return lm


def test_factorised_checkpoints_chain_between_stages(tmp_path, monkeypatch):
    """digits next_token -> dida as a plain table (materialised) works; a plain table into digits is refused."""
    import pytest

    from finetune_embodied.train.checkpoint import CheckpointError, load_checkpoint
    from finetune_embodied.train.factorized_codes import DIGIT_KEY

    lm = _tiny_lm_on_a_dataset(tmp_path, monkeypatch)
    train(lm("nt", "visual_codes=digits"), progress=False)
    nt = latest_checkpoint(tmp_path / "nt" / "checkpoints")
    assert any(k.startswith(DIGIT_KEY) for k in load_checkpoint(nt)["weights"])
    train(lm("plain", f"init_from={nt}", "visual_codes=table"), progress=False)
    plain = latest_checkpoint(tmp_path / "plain" / "checkpoints")
    assert not any(k.startswith(DIGIT_KEY) for k in load_checkpoint(plain)["weights"])
    with pytest.raises(CheckpointError, match="plain embedding table"):
        train(lm("back", f"init_from={plain}", "visual_codes=digits"), progress=False)


def test_reading_warm_up_trains_rest_of_plan_sequences_only_and_next_token_starts_from_it(tmp_path, monkeypatch):
    import pytest

    from finetune_embodied.train.config import ConfigError
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages import make_stage

    lm = _tiny_lm_on_a_dataset(tmp_path, monkeypatch, "data.plan_sequences=true")
    stage = make_stage(lm("reading", "data.train_kinds=[plan]"), DistInfo())
    assert stage.train_set and {s.kind for s in stage.train_set} == {"plan"}
    assert stage.eval_set and {s.kind for s in stage.eval_set} == {"step"}  # evaluation: guidance answers
    both = make_stage(lm("both"), DistInfo())
    assert {s.kind for s in both.train_set} == {"step", "plan"} and len(both.train_set) > len(stage.train_set)

    train(lm("reading", "data.train_kinds=[plan]"), progress=False)
    reading = latest_checkpoint(tmp_path / "reading" / "checkpoints")
    train(lm("nt", f"init_from={reading}"), progress=False)

    with pytest.raises(ConfigError, match="data.plan_sequences"):
        load_config(None, ["data.source=synthetic", "data.train_kinds=[plan]"])
    with pytest.raises(ConfigError, match="train_kinds"):
        load_config(None, ["data.source=synthetic", "data.train_kinds=[pictures]"])
