"""semantic_aux: the tokenizer stage's training-only head that names the object in each token."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from finetune_embodied import record as rec
from finetune_embodied.train.checkpoint import load_checkpoint
from finetune_embodied.train.config import ConfigError, load_config
from finetune_embodied.train.loop import train
from finetune_embodied.train.metrics import read_metrics
from finetune_embodied.train.stages.tokenizer_stage import HEAD_KEY, VISION_DIR
from model_runtime.tokenizers import load_vision_tokenizer


def _cfg(tmp_path, ds, *extra):
    return load_config(None, [
        "stage=tokenizer", f"data.path={ds}", "data.image_size=32", "model={channels: [16, 32], levels: [5, 5]}",
        "optim.batch_size=8", "optim.max_steps=40", "optim.lr=3e-3", "optim.warmup_steps=2", "log_every=2",
        "eval.every=0", "eval.max_samples=16", "data.heldout_fraction=0.34", f"checkpoint.dir={tmp_path / 'run'}",
        *extra,
    ])


def test_aux_loss_falls_and_the_saved_tokenizer_has_no_head(recorded, tmp_path):
    res = train(_cfg(tmp_path, recorded, "semantic_aux.weight=1.0", "semantic_aux.hidden=32",
                     "semantic_aux.object_weight=1.0"), progress=False)
    ce = [r["sem_ce"] for r in read_metrics(res.run_dir / "metrics.jsonl") if r["split"] == "train" and "sem_ce" in r]
    assert len(ce) >= 10 and np.mean(ce[-3:]) < 0.7 * np.mean(ce[:3]), ce
    assert 0.0 <= res.final_eval["semantic_object_acc"] <= 1.0  # the head on held-out frames, logged at eval

    # The checkpoint keeps the head (a resumed run continues it); the tokenizer directory does not.
    assert any(k.startswith(HEAD_KEY) for k in load_checkpoint(res.checkpoint)["weights"])
    tok_dir = res.checkpoint / VISION_DIR
    assert not any(k.startswith(HEAD_KEY) for k in load_file(str(tok_dir / "model.safetensors")))
    tok = load_vision_tokenizer(tok_dir)  # model_runtime's loader, strict about unexpected keys
    assert not hasattr(tok.model, "semantic_head")
    codes = tok.encode(np.zeros((1, 32, 32, 3), np.uint8))
    assert codes.shape == (1, 8, 8) and tok.decode(codes).shape == (1, 32, 32, 3)


def test_a_later_run_starts_from_an_aux_checkpoint(recorded, tmp_path):
    first = train(_cfg(tmp_path, recorded, "semantic_aux.weight=1.0", "semantic_aux.hidden=8",
                       "optim.max_steps=2"), progress=False)
    plain = train(_cfg(tmp_path, recorded, f"init_from={first.checkpoint}", "optim.max_steps=2",
                       f"checkpoint.dir={tmp_path / 'plain'}"), progress=False)
    assert plain.steps == 2 and "semantic_object_acc" not in plain.final_eval


def test_targets_mark_the_objects_of_each_frame(recorded, tmp_path):
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages.tokenizer_stage import TokenizerStage

    stage = TokenizerStage(_cfg(tmp_path, recorded, "semantic_aux.weight=0.5"), DistInfo())
    assert stage.classes and all(" " in name for name in stage.classes)  # full names: "red block"
    cells = np.stack([s.cells for s in stage.train_set])
    assert cells.shape[1] == 8 * 8 and cells.max() <= len(stage.classes)
    shown = np.count_nonzero(cells, axis=1)
    assert shown.max() >= 3 and (shown >= 1).mean() > 0.5  # blocks on the table until they are sorted away
    off = TokenizerStage(_cfg(tmp_path, recorded), DistInfo())
    assert all(s.cells is None for s in off.train_set) and len(off.train_set) == len(stage.train_set)


@pytest.mark.parametrize("override, words", [
    ("semantic_aux.weight=-1", "semantic_aux.weight must be a number >= 0, got -1.0"),
    ("semantic_aux.weight=lots", "semantic_aux.weight must be a number, got 'lots'"),
    ("semantic_aux.object_weight=0", "semantic_aux.object_weight must be a number > 0, got 0.0"),
    ("semantic_aux.hidden=0", "semantic_aux.hidden must be an int >= 1, got 0"),
    ("semantic_aux.hiden=3", "unknown key(s) ['hiden'] in semantic_aux"),
])
def test_bad_values_are_one_line_errors(tmp_path, override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["stage=tokenizer", "data.path=x", override])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_semantic_aux_belongs_to_the_tokenizer_stage_on_a_dataset():
    with pytest.raises(ConfigError, match="semantic_aux is for stage tokenizer on a dataset"):
        load_config(None, ["stage=next_token", "data.path=x", "semantic_aux.weight=1"])
    with pytest.raises(ConfigError, match="semantic_aux is for stage tokenizer on a dataset"):
        load_config(None, ["stage=tokenizer", "data.source=synthetic", "semantic_aux.weight=1"])


def test_a_recording_without_object_pixels_is_refused(recorded, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(recorded, ds)
    (ds / rec.PERCEPTION_FILE).unlink()
    with pytest.raises(ValueError, match="semantic_aux needs object pixels"):
        train(_cfg(tmp_path, ds, "semantic_aux.weight=1.0"), progress=False)
