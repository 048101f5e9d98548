"""Step checks at runtime: the model's probability that a step happened, from the frame after it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CORPUS

from emu_guide.types import Frame
from model_runtime.backends.base import BackendError
from model_runtime.prompt import build_check_prompt, check_answer_ids, check_texts
from model_runtime.session import GuidanceSession


def _checking_model_dir(path, checks: bool = True, words=None):
    from model_runtime.backends.torch_backend import save_model_dir
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.text_tokenizer import WordTokenizer
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    text = WordTokenizer.build(CORPUS + (check_texts() if words is None else words))
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4), channels=(8, 8, 8), res_blocks=0,
                                                out_channels=8), seed=0)
    layout = compact(text.vocab_size, vision.num_codes)
    cfg = LMConfig(vocab_size=layout.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                   head_dim=16, intermediate_size=64)
    return save_model_dir(path, build_lm(cfg, seed=0), vision, text, layout, lm_config=cfg, checks=checks)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from model_runtime.backends.torch_backend import TorchBackend

    return TorchBackend(model_path=_checking_model_dir(tmp_path_factory.mktemp("checking")))


def test_check_step_is_the_models_yes_against_its_no(backend):
    frame = Frame(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    judged = backend.check_step(frame, "pick up the red cup")
    assert judged.step_text == "pick up the red cup" and judged.ms > 0
    # the same number by hand: one forward of the check prompt, softmax over the two answers
    codes = backend.vision.encode_one(backend.prepare_frame(frame))
    prompt = build_check_prompt(backend.layout, backend.text, "pick up the red cup", codes)
    yes, no = check_answer_ids(backend.layout, backend.text)
    with torch.no_grad():
        logits = backend.lm(input_ids=torch.tensor([prompt])).logits[0, -1]
    expected = float(torch.softmax(logits[[yes, no]], 0)[0])
    assert judged.p_happened == pytest.approx(expected, abs=1e-5) and 0.0 < judged.p_happened < 1.0
    assert judged.happened == (expected >= 0.5)
    session = GuidanceSession(backend, "clear the table")
    assert session.checks and session.check(frame, "pick up the red cup").p_happened == pytest.approx(expected, abs=1e-5)
    with pytest.raises(BackendError, match="does not know"):
        backend.check_step(frame, "juggle the red cup")


def test_guidance_json_says_whether_the_model_checks_steps(tmp_path):
    from model_runtime.backends.torch_backend import TorchBackend

    path = _checking_model_dir(tmp_path / "m")
    assert json.loads((path / "guidance.json").read_text())["checks"] is True
    plain = _checking_model_dir(tmp_path / "plain", checks=False)
    assert "checks" not in json.loads((plain / "guidance.json").read_text())
    backend = TorchBackend(model_path=plain)
    frame = Frame(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(BackendError, match="not trained on step checks"):
        backend.check_step(frame, "pick up the red cup")
    assert not GuidanceSession(backend, "clear the table").checks
    doc = json.loads((path / "guidance.json").read_text())
    (path / "guidance.json").write_text(json.dumps({**doc, "checks": "yes"}))
    with pytest.raises(BackendError, match="checks must be true or false"):
        TorchBackend(model_path=path)
    with pytest.raises(ValueError, match="lacks"):  # a vocabulary that cannot say yes / no
        _checking_model_dir(tmp_path / "mute", words=[])
