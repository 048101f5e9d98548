"""The step verifier at runtime: its directory format, and ``check_step`` of a model directory that holds one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CORPUS

from emu_guide.types import Frame
from model_runtime.backends.base import BackendError
from model_runtime.session import GuidanceSession
from model_runtime.step_verifier import (
    VERIFIER_DIR,
    StepVerifier,
    StepVerifierConfig,
    StepVerifierNet,
    batch_words,
    images_to_tensor,
    sentence_words,
)


def _verifier(seed: int = 0) -> StepVerifier:
    torch.manual_seed(seed)
    vocab = sorted({w for t in CORPUS for w in sentence_words(t)})
    return StepVerifier(StepVerifierNet(StepVerifierConfig(vocab=vocab, image_size=32, width=8, text_dim=8)))


def _model_dir(path, verifier_dir=None):
    from model_runtime.backends.torch_backend import save_model_dir
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.text_tokenizer import WordTokenizer
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    text = WordTokenizer.build(CORPUS)
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4), channels=(8, 8, 8), res_blocks=0,
                                                out_channels=8), seed=0)
    layout = compact(text.vocab_size, vision.num_codes)
    cfg = LMConfig(vocab_size=layout.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                   head_dim=16, intermediate_size=64)
    return save_model_dir(path, build_lm(cfg, seed=0), vision, text, layout, lm_config=cfg, step_verifier=verifier_dir)


def _frames(seed: int = 0, shape=(40, 48, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, shape, dtype=np.uint8), rng.integers(0, 255, shape, dtype=np.uint8)


def test_a_saved_verifier_gives_the_same_probability_as_its_network_by_hand(tmp_path):
    v = _verifier()
    v.save(tmp_path / "v")
    loaded = StepVerifier.load(tmp_path / "v")
    before, after = _frames()  # not square, not the verifier's size: resized as the tokenizer resizes frames
    p, ms = loaded.p_happened(before, after, "pick up the red cup")
    words, lengths = batch_words(["pick up the red cup"], loaded.vocab_index, loaded.cfg.max_words)
    with torch.no_grad():
        logit = v.net(images_to_tensor([before], 32), images_to_tensor([after], 32), words, lengths)
    assert p == pytest.approx(float(torch.sigmoid(logit)[0]), abs=1e-6) and 0.0 < p < 1.0 and ms > 0
    # the order of the frames matters (before -> after), and so does the sentence
    assert loaded.p_happened(after, before, "pick up the red cup")[0] != pytest.approx(p, abs=1e-7)
    assert loaded.p_happened(before, after, "place the blue block in the bin")[0] != pytest.approx(p, abs=1e-7)
    assert loaded.unknown_words("juggle the red cup") == ["juggle"] and loaded.unknown_words("Pick up the red cup.") == []


def test_a_broken_verifier_directory_is_a_one_line_error(tmp_path):
    _verifier().save(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    (tmp_path / "v" / "config.json").write_text(json.dumps({**cfg, "width": 16}))  # weights of width 8
    with pytest.raises(ValueError, match="weights do not match its config"):
        StepVerifier.load(tmp_path / "v")
    (tmp_path / "v" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"step verifier .*: cannot load"):
        StepVerifier.load(tmp_path / "v")
    with pytest.raises(ValueError, match="cannot load"):
        StepVerifier.load(tmp_path / "missing")


def test_check_step_is_the_model_directorys_verifier(tmp_path):
    from model_runtime.backends.torch_backend import TorchBackend

    v = _verifier()
    v.save(tmp_path / "v")
    path = _model_dir(tmp_path / "m", tmp_path / "v")
    assert (path / VERIFIER_DIR / "model.safetensors").is_file()
    backend = TorchBackend(model_path=path)
    before, after = _frames(1)
    judged = backend.check_step(Frame(before), Frame(after), "pick up the red cup")
    expected, _ = v.p_happened(before, after, "pick up the red cup")
    assert judged.p_happened == pytest.approx(expected, abs=1e-6) and judged.happened == (expected >= judged.threshold)
    assert judged.step_text == "pick up the red cup" and judged.unknown_words == [] and judged.ms > 0
    session = GuidanceSession(backend, "clear the table")
    assert session.checks and session.check(Frame(before), Frame(after), "pick up the red cup").p_happened == pytest.approx(expected, abs=1e-6)
    assert backend.check_step(Frame(before), Frame(after), "juggle the red cup").unknown_words == ["juggle"]


def test_a_model_without_a_verifier_says_so_and_a_broken_one_does_not_load(tmp_path):
    from model_runtime.backends.torch_backend import TorchBackend

    plain = TorchBackend(model_path=_model_dir(tmp_path / "plain"))
    before, after = _frames(2)
    assert not plain.checks and not GuidanceSession(plain, "clear the table").checks
    with pytest.raises(BackendError, match="has no step verifier"):
        plain.check_step(Frame(before), Frame(after), "pick up the red cup")
    with pytest.raises(ValueError, match="cannot load"):  # export refuses a directory that is not a verifier
        _model_dir(tmp_path / "bad", tmp_path / "nothing")
    _verifier().save(tmp_path / "v")
    path = _model_dir(tmp_path / "m", tmp_path / "v")
    (path / VERIFIER_DIR / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(BackendError, match="step verifier"):
        TorchBackend(model_path=path)
