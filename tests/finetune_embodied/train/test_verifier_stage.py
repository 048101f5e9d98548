"""Stage verifier at toy size: a recording -> the step verifier -> export into a model directory ->
``TorchBackend.check_step`` answers with it."""

from __future__ import annotations

import numpy as np
import pytest
from test_train_bad_data import _tok_cfg
from train_helpers import TINY_LM

from finetune_embodied.train.checkpoint import latest_checkpoint
from finetune_embodied.train.config import ConfigError, load_config
from finetune_embodied.train.loop import train


def _verifier_cfg(tmp_path, ds, *extra):
    return load_config(None, [
        "stage=verifier", f"data.path={ds}", "data.image_size=32", "model={width: 8, text_dim: 8}",
        "data.heldout_fraction=0.34", "optim.batch_size=4", "optim.max_steps=3", "optim.warmup_steps=1",
        "eval.max_samples=64", "eval.every=0", "log_every=1", f"checkpoint.dir={tmp_path / 'verifier'}", *extra,
    ])


def test_tiny_verifier_training_exports_a_model_that_checks_steps(recorded, tmp_path, monkeypatch):
    from emu_guide.types import Frame
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.default_model import export_model
    from finetune_embodied.sequences import verification_pairs
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages import make_stage
    from model_runtime.backends.torch_backend import TorchBackend
    from model_runtime.step_verifier import VERIFIER_DIR, StepVerifier

    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    cfg = _verifier_cfg(tmp_path, recorded)
    stage = make_stage(cfg, DistInfo())
    episodes = list(open_dataset(recorded).iter_episodes(load_images=False))
    expected = sum(len(verification_pairs(ep, None, np.random.default_rng(0))) for ep in episodes)
    assert len(stage.train_set) + len(stage.eval_set) == expected > 0  # every pair of every episode, split by episode
    assert {s.happened for s in stage.train_set} == {True, False}
    assert stage.train_set[0].before.shape == (32, 32, 3)
    summary = train(cfg, progress=False)
    ev = summary.final_eval
    for key in ("acc", "false_done", "missed_done", "acc_step", "acc_partway"):
        assert 0.0 <= ev[key] <= 1.0
    ckpt = latest_checkpoint(tmp_path / "verifier" / "checkpoints")
    assert (ckpt / VERIFIER_DIR / "config.json").is_file()

    train(_tok_cfg(tmp_path, recorded), progress=False)
    tok = latest_checkpoint(tmp_path / "run" / "checkpoints")
    train(load_config(None, ["stage=next_token", f"data.path={recorded}", f"tokenizer={tok}", TINY_LM,
                             "data.mid_samples_per_step=0", "optim.batch_size=2", "optim.max_steps=2", "eval.every=0",
                             "eval.max_samples=2", f"checkpoint.dir={tmp_path / 'lm'}"]), progress=False)
    out = tmp_path / "model"
    export_model(latest_checkpoint(tmp_path / "lm" / "checkpoints"), tok, out, verifier_ckpt=ckpt)
    backend = TorchBackend(model_path=str(out))
    before, after = (np.random.default_rng(k).integers(0, 255, (32, 32, 3), dtype=np.uint8) for k in (0, 1))
    judged = backend.check_step(Frame(before), Frame(after), "put the red block in the red bin")
    expected_p, _ = StepVerifier.load(ckpt / VERIFIER_DIR).p_happened(before, after, "put the red block in the red bin")
    assert judged.p_happened == pytest.approx(expected_p, abs=1e-6)
    with pytest.raises(ValueError, match="not a verifier-stage checkpoint"):
        export_model(latest_checkpoint(tmp_path / "lm" / "checkpoints"), tok, tmp_path / "bad", verifier_ckpt=tok)


def test_verifier_config_errors_name_the_field(recorded, tmp_path):
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages import make_stage

    with pytest.raises(ConfigError, match="lora.enabled is for the language-model stages, not stage 'verifier'"):
        _verifier_cfg(tmp_path, recorded, "lora.enabled=true")
    with pytest.raises(ValueError, match="model.vocab is set by the data"):
        make_stage(_verifier_cfg(tmp_path, recorded, "model={vocab: [a]}"), DistInfo()).build_model()
    with pytest.raises(ValueError, match="StepVerifierConfig"):
        make_stage(_verifier_cfg(tmp_path, recorded, "model={depth: 3}"), DistInfo()).build_model()
    with pytest.raises(ValueError, match="width must be an integer >= 1, got 0"):
        make_stage(_verifier_cfg(tmp_path, recorded, "model={width: 0}"), DistInfo()).build_model()
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\)"):
        make_stage(_verifier_cfg(tmp_path, recorded, "model={threshold: 1.5}"), DistInfo()).build_model()
    with pytest.raises(ValueError, match="trains on a recording"):
        make_stage(load_config(None, ["stage=verifier", "data.source=synthetic"]), DistInfo())
