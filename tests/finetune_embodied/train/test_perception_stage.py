"""Stage perception at toy size: a recording -> the scene perceiver -> export into a model directory ->
``TorchBackend`` perceives with it and plans from what it perceived."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_train_bad_data import _tok_cfg
from train_helpers import TINY_LM

from finetune_embodied.train.checkpoint import latest_checkpoint
from finetune_embodied.train.config import ConfigError, load_config
from finetune_embodied.train.loop import train


def _perception_cfg(tmp_path, ds, *extra):
    return load_config(None, [
        "stage=perception", f"data.path={ds}", "data.image_size=32", "model={grid: 4, width: 8, layers: 1, heads: 2}",
        "data.heldout_fraction=0.34", "optim.batch_size=4", "optim.max_steps=3", "optim.warmup_steps=1",
        "eval.max_samples=64", "eval.every=0", "log_every=1", f"checkpoint.dir={tmp_path / 'perception'}", *extra,
    ])  # fmt: skip


def test_tiny_perceiver_training_exports_a_model_that_plans_from_its_perception(recorded, tmp_path, monkeypatch):
    from emu_guide.types import Frame
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.default_model import export_model
    from finetune_embodied.record import load_perceptions
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages import make_stage
    from model_runtime.backends.torch_backend import TorchBackend
    from model_runtime.prompt import format_perception, parse_perception
    from model_runtime.scene_perceiver import PERCEIVER_DIR, ScenePerceiver

    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    cfg = _perception_cfg(tmp_path, recorded)
    stage = make_stage(cfg, DistInfo())
    truth = load_perceptions(recorded)
    assert stage.config.names == sorted({o["name"] for texts in truth.values() for t in texts
                                         for o in parse_perception(t)["objects"]}
                                        | {parse_perception(t)["holding"] for texts in truth.values() for t in texts} - {None})
    episodes = list(open_dataset(recorded).iter_episodes(load_images=False))
    boundaries = sum(1 + sum(a != b for a, b in zip(ep.subtasks, ep.subtasks[1:])) for ep in episodes)
    assert len(stage.train_set) + len(stage.eval_set) >= boundaries  # every step's end, plus frames inside steps
    sample = stage.train_set[0]
    assert sample.image.shape == (32, 32, 3) and sample.objects  # frame 0 of a SortBlocks episode: blocks on the table
    summary = train(cfg, progress=False)
    for key in ("object_f1", "cell_acc", "holding_acc", "exact"):
        assert 0.0 <= summary.final_eval[key] <= 1.0
    ckpt = latest_checkpoint(tmp_path / "perception" / "checkpoints")
    assert (ckpt / PERCEIVER_DIR / "config.json").is_file()

    train(_tok_cfg(tmp_path, recorded), progress=False)
    tok = latest_checkpoint(tmp_path / "run" / "checkpoints")
    train(load_config(None, ["stage=next_token", f"data.path={recorded}", f"tokenizer={tok}", TINY_LM,
                             "data.mid_samples_per_step=0", "optim.batch_size=2", "optim.max_steps=2", "eval.every=0",
                             "eval.max_samples=2", f"checkpoint.dir={tmp_path / 'lm'}"]), progress=False)
    out = tmp_path / "model"
    export_model(latest_checkpoint(tmp_path / "lm" / "checkpoints"), tok, out, perceiver_ckpt=ckpt)
    backend = TorchBackend(model_path=str(out))
    assert backend.perceives and backend.perceiver.cfg.names == stage.config.names
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    seen = backend.perceive(Frame(image), "put the red block in the left bin", [])
    expected, _ = ScenePerceiver.load(ckpt / PERCEIVER_DIR).perceive(image)
    assert seen.text == format_perception(expected["objects"], expected["holding"])
    step = backend.next_step(Frame(image), "put the red block in the left bin", [])
    assert step.perception == seen.perception and step.timings_ms["perceive"] > 0
    # what the step names comes from the perception: an empty one leaves no block to name
    empty = backend.next_step(Frame(image), "put the red block in the left bin", [],
                              _options(perception="see nothing holding nothing ."))
    assert empty.perception == {"objects": [], "holding": None}
    assert not any(n in empty.text for n in stage.config.names)
    # a plain-format LM plans from a perception as grounded decoding does: the perceiver's names are
    # known, the perceived ones (and the held one) allowed, unless the caller grounds the step itself
    _, opts, _ = backend._plan_from("see red block left back holding blue block .", _options())
    assert opts.known_names == tuple(stage.config.names) and opts.allowed_names == ("red block", "blue block")
    _, caller, _ = backend._plan_from("see nothing holding nothing .", _options(known_names=("x",), allowed_names=("x",)))
    assert caller.allowed_names == ("x",)
    with pytest.raises(ValueError, match="not a perception-stage checkpoint"):
        export_model(latest_checkpoint(tmp_path / "lm" / "checkpoints"), tok, tmp_path / "bad", perceiver_ckpt=tok)


def _options(**kw):
    from model_runtime.backends.base import DecodeOptions

    return DecodeOptions(**kw)


def test_perception_stage_errors_name_the_problem(recorded, tmp_path):
    from finetune_embodied.record import PERCEPTION_FILE
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages import make_stage

    with pytest.raises(ConfigError, match="lora.enabled is for the language-model stages, not stage 'perception'"):
        _perception_cfg(tmp_path, recorded, "lora.enabled=true")
    with pytest.raises(ValueError, match="model.names is set by the data"):
        make_stage(_perception_cfg(tmp_path, recorded, "model={names: [a]}"), DistInfo())
    with pytest.raises(ValueError, match="ScenePerceiverConfig.*must be 8 times grid 5"):
        make_stage(_perception_cfg(tmp_path, recorded, "model={grid: 5}"), DistInfo())
    with pytest.raises(ValueError, match="trains on a recording"):
        make_stage(load_config(None, ["stage=perception", "data.source=synthetic"]), DistInfo())
    bare = tmp_path / "bare"
    shutil.copytree(recorded, bare)
    (bare / PERCEPTION_FILE).unlink()
    with pytest.raises(ValueError, match="has no per-frame perception with object pixels"):
        make_stage(_perception_cfg(tmp_path, bare), DistInfo())


def test_name_radius_names_the_cells_around_each_centre_in_training_batches(recorded, tmp_path, monkeypatch):
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages import make_stage

    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    plain = make_stage(_perception_cfg(tmp_path, recorded), DistInfo())
    flat = plain.collate(plain.train_set[:4])
    assert torch.equal(flat["name_cells"] != 0, flat["cells"] != 0)  # radius 0: names at the centre cells only
    stage = make_stage(_perception_cfg(tmp_path, recorded, "data.name_radius=1"), DistInfo())
    batch = stage.collate(stage.train_set[:4])
    centres, named = batch["cells"] != 0, batch["name_cells"] != 0
    assert centres.any() and (named.sum() > centres.sum()) and (batch["name_cells"][centres] != 0).all()
    summary = train(_perception_cfg(tmp_path / "r1", recorded, "data.name_radius=1"), progress=False)
    assert 0.0 <= summary.final_eval["object_f1"] <= 1.0


def test_a_name_reader_trains_alone_on_a_trained_perceiver(recorded, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.stages import make_stage
    from model_runtime.scene_perceiver import PERCEIVER_DIR, ScenePerceiver

    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    train(_perception_cfg(tmp_path / "base", recorded), progress=False)
    base = latest_checkpoint(tmp_path / "base" / "perception" / "checkpoints")
    reader = [f"init_from={base}", "model={grid: 4, width: 8, layers: 1, heads: 2, name_crop: 8}", "data.reader_crops=16"]
    summary = train(_perception_cfg(tmp_path / "r", recorded, *reader, "data.names_only=true"), progress=False)
    assert 0.0 <= summary.final_eval["object_f1"] <= 1.0  # decoded with the reader, as the runtime decodes
    ckpt = latest_checkpoint(tmp_path / "r" / "perception" / "checkpoints")
    before = load_file(str(base / PERCEIVER_DIR / "model.safetensors"))
    after = load_file(str(ckpt / PERCEIVER_DIR / "model.safetensors"))
    assert {k for k in after if k not in before} == {k for k in after if k.startswith("reader.")}
    assert all(torch.equal(before[k], after[k]) for k in before)  # the perceiver itself is frozen
    loaded = ScenePerceiver.load(ckpt / PERCEIVER_DIR)
    assert loaded.net.reader is not None and loaded.cfg.name_crop == 8
    loaded.perceive(np.zeros((32, 32, 3), dtype=np.uint8))
    # the reader alone needs a perceiver to read on, with the names it was trained on
    with pytest.raises(ValueError, match="names_only trains the name reader alone: it needs model.name_crop > 0 and init_from"):
        make_stage(_perception_cfg(tmp_path, recorded, "data.names_only=true"), DistInfo())
    with pytest.raises(ValueError, match="no scene perceiver"):
        make_stage(_perception_cfg(tmp_path, recorded, *reader[1:], f"init_from={tmp_path}", "data.names_only=true"), DistInfo())
    doc = json.loads((base / PERCEIVER_DIR / "config.json").read_text())
    doc["names"] = doc["names"][1:]
    (base / PERCEIVER_DIR / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="the recording names objects its perceiver does not know"):
        make_stage(_perception_cfg(tmp_path, recorded, *reader, "data.names_only=true"), DistInfo())
