"""TorchBackend on a tiny random model directory (real LM, tokenizers and decoding; random weights)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from emu_guide.types import DecodeMode, Frame, PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions, load_backend


@pytest.fixture(scope="module")
def backend(model_dir):
    return load_backend("torch", model_path=model_dir)


@pytest.mark.parametrize("mode", ["dida", "ar"])
def test_next_step_returns_a_valid_plan_step(backend, frame, mode):
    seen_image = False
    for seed in range(6):
        opts = DecodeOptions(mode=mode, dida_steps=3, seed=seed, text_temperature=1.0, max_text_tokens=5,
                             guidance_scale=2.0 if seed % 2 else 1.0)  # fmt: skip
        step = backend.next_step(frame, "clear the table", [], opts)
        assert isinstance(step, PlanStep) and step.index == 0 and step.decode_mode is DecodeMode(mode)
        assert step.timings_ms["total"] > 0 and step.text
        if not step.is_final:
            seen_image = True
            assert step.subgoal_image.shape == (32, 32, 3) and step.subgoal_tokens.shape == (4, 4)
            # the subgoal tokens are what the model emitted, decoded by the vision tokenizer
            assert np.array_equal(backend.vision.encode_one(step.subgoal_image).shape, (4, 4))
            assert all(w in backend.text.words for w in step.text.split())
    assert seen_image
    assert backend.image_size == (32, 32) and backend.name == "torch"


def test_history_index_and_determinism(backend, frame):
    hist = [PlanStep(index=0, text="pick up the red cup")]
    a = backend.next_step(frame, "clear the table", hist, DecodeOptions(seed=3, text_temperature=1.0, max_text_tokens=6))
    b = backend.next_step(frame, "clear the table", hist, DecodeOptions(seed=3, text_temperature=1.0, max_text_tokens=6))
    assert a.index == 1 and a.text == b.text
    if not a.is_final:
        assert np.array_equal(a.subgoal_tokens, b.subgoal_tokens)


@pytest.mark.parametrize("mode", ["dida", "ar"])
def test_the_sentence_is_streamed_before_the_image(backend, frame, mode):
    steps = 0
    for seed in range(6):
        streamed: list[PlanStep] = []
        opts = DecodeOptions(mode=mode, dida_steps=3, seed=seed, text_temperature=1.0, max_text_tokens=5,
                             on_text=streamed.append)
        step = backend.next_step(frame, "clear the table", [], opts)
        if step.is_final:  # a "done" answer has no image to wait for: nothing streamed
            assert streamed == []
            continue
        steps += 1
        [partial] = streamed
        assert (partial.index, partial.text, partial.subgoal_image, partial.goal) == (0, step.text, None, None)
        # streamed before the image was decoded: no later than the step's time without the image
        assert 0 < partial.timings_ms["text_ready"] <= step.timings_ms["total"] - step.timings_ms["image"]
    assert steps


def test_bad_inputs_raise_backend_error(backend, frame):
    with pytest.raises(BackendError, match="does not know"):
        backend.next_step(frame, "juggle the flamingo", [])
    with pytest.raises(BackendError, match="empty"):
        backend.next_step(frame, "  ", [])
    with pytest.raises(BackendError, match="Frame"):
        backend.next_step(np.zeros((32, 32, 3), np.uint8), "clear the table", [])
    bad = Frame(image=np.zeros((8, 8, 3), np.uint8))
    bad.image = np.zeros((8, 8), np.uint8)  # mutated after validation
    with pytest.raises(BackendError, match="malformed frame"):
        backend.next_step(bad, "clear the table", [])
    with pytest.raises(BackendError, match="oracle"):
        backend.next_step(frame, "clear the table", [], DecodeOptions(mode="oracle"))


def test_load_errors_name_the_problem(model_dir, tmp_path, monkeypatch):
    from model_runtime.backends import torch_backend

    with pytest.raises(BackendError, match="does not exist"):
        load_backend("torch", model_path=tmp_path / "nope")
    monkeypatch.setattr("emu_guide.paths.shipped_model_dir", lambda: tmp_path / "default_model")
    with pytest.raises(BackendError, match="shipped default model"):
        torch_backend.TorchBackend()

    def copy(name):
        d = tmp_path / name
        shutil.copytree(model_dir, d)
        return d

    d = copy("corrupt")
    (d / "lm" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(BackendError, match=r"model\.safetensors: corrupt"):
        load_backend("torch", model_path=d)
    d = copy("missing")
    (d / "lm" / "model.safetensors").unlink()
    with pytest.raises(BackendError, match="weights missing"):
        load_backend("torch", model_path=d)
    d = copy("layout")
    doc = json.loads((d / "guidance.json").read_text())
    doc["layout"], doc["layout_kwargs"] = "emu35", {}
    (d / "guidance.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="wrong layout|codes but layout|vocab_size"):
        load_backend("torch", model_path=d)
    d = copy("nojson")
    (d / "guidance.json").unlink()
    with pytest.raises(BackendError, match="guidance.json: missing"):
        load_backend("torch", model_path=d)
    d = copy("words")
    doc = json.loads((d / "guidance.json").read_text())
    doc["layout_kwargs"]["num_text_words"] += 1
    (d / "guidance.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="wrong layout"):
        load_backend("torch", model_path=d)


def test_the_prompt_keeps_the_done_steps_the_model_was_trained_on(model_dir, tmp_path, frame):
    """guidance.json "max_history" (export writes the training data's): the prompt shows the most
    recent that many done steps; the step's index still counts them all."""
    from model_runtime.prompt import build_prompt

    d = tmp_path / "recent"
    shutil.copytree(model_dir, d)
    doc = json.loads((d / "guidance.json").read_text())
    hist = [PlanStep(index=i, text=t) for i, t in enumerate(["pick up the red cup", "put the red cup in the bin",
                                                               "pick up the blue block"])]
    for keep, shown in ((2, [h.text for h in hist[1:]]), (4, [h.text for h in hist]), (0, []),
                        (None, [h.text for h in hist])):
        doc.pop("max_history", None)
        if keep is not None:
            doc["max_history"] = keep
        (d / "guidance.json").write_text(json.dumps(doc))
        b = load_backend("torch", model_path=d)
        assert b.history_texts(hist) == shown
        opts = DecodeOptions(mode="ar", max_text_tokens=4)
        asked, _, _, _ = b._prompt(frame, "clear the table", hist, opts, answer_runs=1)
        codes = b.vision.encode_one(b.prepare_frame(frame))
        assert asked == build_prompt(b.layout, b.text, "clear the table", shown, codes, task=b.task)
        assert b.next_step(frame, "clear the table", hist, opts).index == 3
    doc["max_history"] = -1
    (d / "guidance.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="max_history must be an integer >= 0, got -1"):
        load_backend("torch", model_path=d)


def test_sharded_checkpoint_loads(model_dir, tmp_path):
    """A sharded safetensors checkpoint (index + shards), as real Emu3.5 weights come."""
    from model_runtime.lm import LMLoadError, load_lm

    lm = load_lm(model_dir / "lm")
    out = tmp_path / "sharded"
    lm.save_pretrained(out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").exists()
    again = load_lm(out)
    for (n, a), (_, b) in zip(lm.state_dict().items(), again.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), n
    shard = sorted(out.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(LMLoadError, match=shard.name):
        load_lm(out)


def test_grounded_decoding_names_only_allowed_objects(backend, frame):
    assert backend.mention_ids(DecodeOptions()) is None
    known, allowed = backend.mention_ids(DecodeOptions(known_names=("red cup", "green cup"), allowed_names=("blue block",)))
    assert [len(ids) for ids in known] == [2, 0]  # "green" is not in the vocabulary: the model cannot say it
    assert len(allowed[0]) == 2
    free_red = 0
    for seed in range(12):  # sampled text from a random model: many different word sequences
        options = DecodeOptions(text_temperature=1.5, seed=seed, known_names=("red cup", "blue block"),
                                allowed_names=("blue block",))
        words = backend.next_step(frame, "clear the table", [], options).text.split()
        # "red" starts "red cup", which is not allowed: it may be said only where no "cup" follows
        assert all(words[i + 1] != "cup" for i, w in enumerate(words[:-1]) if w == "red")
        assert all(words[i + 1] == "block" for i, w in enumerate(words[:-1]) if w == "blue")
        free = backend.next_step(frame, "clear the table", [], DecodeOptions(text_temperature=1.5, seed=seed))
        free_red += "red" in free.text.split()
    assert free_red >= 3  # unconstrained, the same model says "red" often
