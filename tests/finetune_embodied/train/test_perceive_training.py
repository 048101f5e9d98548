"""End to end at toy size: record (with perception targets) -> tokenizer -> next-token on "perceive"
answers -> export -> TorchBackend decodes the perception first."""

from __future__ import annotations

import json

import numpy as np
from test_train_bad_data import _tok_cfg
from train_helpers import TINY_LM

from finetune_embodied import record as rec
from finetune_embodied.train.checkpoint import latest_checkpoint
from finetune_embodied.train.config import load_config
from finetune_embodied.train.loop import train
from finetune_embodied.train.stages.lm_data import dataset_sequences
from model_runtime.prompt import parse_answer, parse_perception


def test_recording_stores_one_perception_per_frame(recorded):
    from finetune_embodied.datasets import open_dataset

    perceptions = rec.load_perceptions(recorded)
    episodes = list(open_dataset(recorded).iter_episodes(load_images=False))
    assert sorted(perceptions) == [e.episode_index for e in episodes]
    for ep in episodes:
        frames = perceptions[ep.episode_index]
        assert len(frames) == ep.length
        first, last = parse_perception(frames[0]), parse_perception(frames[-1])
        assert len(first["objects"]) >= 3 and first["holding"] is None  # every block on the table
        assert all(o["kind"] == "block" for o in first["objects"])
        # Some frame in between shows a block in the gripper.
        assert any(parse_perception(f)["holding"] for f in frames)
        assert last["holding"] is None


def test_tiny_next_token_training_on_perceive_answers_exports_a_perceiving_model(recorded, tmp_path, monkeypatch,
                                                                                  capsys):
    from finetune_embodied.default_model import export_model
    from model_runtime.backends.torch_backend import TorchBackend

    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    train(_tok_cfg(tmp_path, recorded), progress=False)
    tok = latest_checkpoint(tmp_path / "run" / "checkpoints")
    common = [
        "stage=next_token", f"data.path={recorded}", f"tokenizer={tok}", "data.answer=perceive", TINY_LM,
        "model.tie_word_embeddings=false", "input_embedding_init_std=1.0", "data.heldout_fraction=0.5",
        "data.mid_samples_per_step=0", "optim.batch_size=2", "optim.max_steps=4", "optim.warmup_steps=1",
        "eval.max_samples=2", "eval.every=0", "log_every=1", f"checkpoint.dir={tmp_path / 'lm'}",
    ]
    cfg = load_config(None, [*common, "perception_aux.weight=1.0"])
    text_tok, layout, seqs, _, _ = dataset_sequences(cfg, None)
    # A later stage without the probe (dida) reads the same sequences from the cache, cell targets and all;
    # the probe's stage never takes sequences cached without them.
    capsys.readouterr()
    _, _, again, _, _ = dataset_sequences(load_config(None, common), None)
    assert "from the cache" in capsys.readouterr().out
    assert [a.input_ids.tolist() for a in again] == [s.input_ids.tolist() for s in seqs]
    _, _, plain, _, _ = dataset_sequences(load_config(None, [*common, "data.max_history=3"]), None)
    assert all(s.frame_cells is None for s in plain)
    capsys.readouterr()
    probe_cfg = load_config(None, [*common, "data.max_history=3", "perception_aux.weight=1.0"])
    _, _, probed, _, _ = dataset_sequences(probe_cfg, None)
    assert "from the cache" not in capsys.readouterr().out
    assert any(s.frame_cells is not None for s in probed)
    steps = [s for s in seqs if s.kind == "step"]
    for s in steps[:5]:  # every guidance answer parses back with its perception first
        parsed = parse_answer(layout, text_tok, s.input_ids[s.prompt_length:], answer_format="perceive")
        assert parsed.perception is not None and len(parsed.perception["objects"]) <= 4
        # the probe's targets: one object class per listed object, on its centre's token
        assert s.frame_cells is not None and s.frame_cells.shape == (s.image_spans[0].height * s.image_spans[0].width,)
        # (and the held object's, on its token)
        assert np.count_nonzero(s.frame_cells) <= len(parsed.perception["objects"]) + bool(parsed.perception["holding"])
    summary = train(cfg, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    losses = [d["loss"] for d in logged if d.get("split") == "train" and "loss" in d]
    assert summary.steps == 4 and losses and all(np.isfinite(losses))
    assert all(np.isfinite(d["aux_cell_ce"]) for d in logged if d.get("split") == "train")
    assert 0.0 <= summary.final_eval["probe_object_acc"] <= 1.0  # the probe, measured on held-out frames

    out = tmp_path / "model"
    export_model(latest_checkpoint(tmp_path / "lm" / "checkpoints"), tok, out)
    assert json.loads((out / "guidance.json").read_text())["answer"] == "perceive"
    backend = TorchBackend(model_path=str(out))
    assert backend.answer_format == "perceive"
    from emu_guide.types import Frame
    from finetune_embodied.datasets import open_dataset
    from model_runtime.backends.base import BackendError, DecodeOptions

    instruction = next(open_dataset(recorded).iter_episodes(load_images=False)).task
    frame = Frame(image=np.zeros((32, 32, 3), np.uint8))
    try:
        step = backend.next_step(frame, instruction, [], DecodeOptions(mode="ar", max_text_tokens=8))
        assert isinstance(step.perception, dict)
    except BackendError as exc:  # an untrained model may say a malformed perception: a clear parse error
        assert "does not parse" in str(exc)
    tokens = backend.last_answer.tokens
    marker = text_tok.encode(".")[0]
    assert marker in tokens and (layout.boi not in tokens or tokens.index(marker) < tokens.index(layout.boi))
