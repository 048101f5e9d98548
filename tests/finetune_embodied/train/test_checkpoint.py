"""Atomic checkpoints: verified on load, full disk leaves the previous one intact."""

from __future__ import annotations

import errno

import pytest
import torch

from finetune_embodied.train import checkpoint as ckpt
from finetune_embodied.train.loop import train


def _save(root, step, value=1.0, **kw):
    weights = {"a.weight": torch.full((3, 4), value), "b": torch.arange(5.0)}
    weights["tied"] = weights["a.weight"]  # shared storage, as tied embeddings
    return ckpt.save_checkpoint(root, step, weights, {"stage": "next_token", "step": step}, {"step": step}, **kw)


def test_roundtrip_and_keep_last(tmp_path):
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, value=float(s), keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    loaded = ckpt.load_checkpoint(tmp_path / "step-00000004")
    assert torch.equal(loaded["weights"]["tied"], torch.full((3, 4), 4.0))
    assert loaded["trainer_state"] == {"step": 4} and loaded["config"]["step"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    path = _save(tmp_path, 7)
    w = path / "model.safetensors"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(w.read_bytes())
        data[-3] ^= 0xFF
        w.write_bytes(bytes(data))
    elif damage == "delete":
        (path / "trainer_state.pt").unlink()
    else:
        (path / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint directory"):
        ckpt.resolve_resume(tmp_path, str(tmp_path / "nope"))
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope")


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = _save(tmp_path, 1)

    def full_disk(*args, **kwargs):  # what the OS raises when the disk is full mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError) as err:
        _save(tmp_path, 2)
    assert "disk full" in str(err.value) and str(good) in str(err.value)
    monkeypatch.undo()
    assert ckpt.list_checkpoints(tmp_path) == [good]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    ckpt.load_checkpoint(good)  # still verifies


def test_training_refuses_a_corrupt_latest_checkpoint(tiny_lm):
    cfg = tiny_lm("r", "optim.max_steps=4", "checkpoint.every=2")
    res = train(cfg, stop_after_step=2, progress=False)
    (res.checkpoint / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        train(cfg, progress=False)


def test_checkpoint_from_another_stage_is_refused(tiny_lm):
    cfg = tiny_lm("x", "optim.max_steps=2")
    train(cfg, progress=False)
    with pytest.raises(ckpt.CheckpointError, match="stage 'next_token', not 'dida'"):
        train(tiny_lm("x", "optim.max_steps=4", "stage=dida"), progress=False)
