"""The Emu3.5 release as published (tiny fixtures in its formats, see emu35_release.py) through the torch backend."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from emu_guide.types import DecodeMode, PlanStep
from model_runtime.backends.base import OFFICIAL_DECODE_DEFAULTS, BackendError, DecodeOptions, load_backend
from tests.model_runtime.backends.emu35_release import make_release, release_config, write_lm

OFFICIAL_UNCOND = "<|extra_203|>You are a helpful assistant. USER: <|IMAGE|> ASSISTANT: <|extra_100|>"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def backend(release):
    lm_dir, tok_dir, _ = release
    return load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True,
                        image_size=(8, 8))  # fmt: skip


def test_release_config_runs_as_qwen3_with_identical_logits(release):
    from model_runtime.layout import emu35
    from model_runtime.lm import load_lm

    lm_dir, _, reference = release
    assert json.loads((lm_dir / "config.json").read_text())["model_type"] == "Emu3"
    assert len(list(lm_dir.glob("model-*.safetensors"))) > 1  # sharded, as released
    model = load_lm(lm_dir, emu35())
    assert model.checkpoint_format == "emu3.5-release" and model.dtype == torch.float32  # CPU: float32
    assert model.config.rope_parameters["rope_theta"] == 1e6 and model.config.head_dim == 8
    assert not model.config.tie_word_embeddings
    ids = torch.tensor([[151849, 40, 41, 151852, 17, 9, 17, 151851, 151854 + 5, 151854 + 131_071]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_release_tokenizer_needs_the_opt_in(release):
    lm_dir, tok_dir, _ = release
    with pytest.raises(BackendError) as err:
        load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir, image_size=(8, 8))
    msg = str(err.value)
    assert "\n" not in msg and "tokenization_emu3.py: Emu3Tokenizer" in msg and "trust_remote_code=True" in msg
    assert "--trust-remote-code" in msg
    with pytest.raises(BackendError, match="trust_remote_code must be True or False"):
        load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code="yes")
    # The release keeps its tokenizer in the code repository, not with the weights: the error says where.
    with pytest.raises(BackendError, match="src/tokenizer_emu3_ibq"):
        load_backend("torch", model_path=lm_dir, layout="emu35", trust_remote_code=True, image_size=(8, 8))


def test_release_loads_and_plans_with_ar_default(backend, frame):
    assert backend.vision.num_codes == 131_072  # found beside the LM: weights/Emu3.5-VisionTokenizer
    assert backend.dida_adapted is False and backend.default_mode is DecodeMode.AR
    assert backend.text.vocab_size == 282_926
    opts = DecodeOptions(max_text_tokens=3, guidance_scale=1.0, seed=1)
    try:
        step = backend.next_step(frame, "clear the table", [], opts)
        assert isinstance(step, PlanStep) and step.decode_mode is DecodeMode.AR
    except BackendError as exc:  # random weights may close the answer without an image: a named parse error
        assert "does not parse" in str(exc)
    answer = backend.last_answer
    assert answer.forwards.get("image", 0) in (0, 16)  # AR: one forward per cell of the 4x4 grid
    with pytest.raises(BackendError, match="never DiDA-adapted.*force_dida=True"):
        backend.next_step(frame, "clear the table", [], DecodeOptions(mode="dida", max_text_tokens=3))


def test_release_sampling_defaults_are_the_official_ones(backend):
    resolved = backend._options(DecodeOptions())
    official = OFFICIAL_DECODE_DEFAULTS["emu35"]
    assert {k: getattr(resolved, k) for k in official} == official
    assert (resolved.text_top_k, resolved.text_top_p, resolved.top_k, resolved.guidance_scale) == (1024, 0.9, 10240, 3.0)
    assert resolved.mode is DecodeMode.AR
    mine = backend._options(DecodeOptions(text_temperature=0.0, top_k=50))  # what the caller sets is kept
    assert mine.text_temperature == 0.0 and mine.top_k == 50 and mine.text_top_k == 1024
    forced = backend._options(DecodeOptions(mode="dida", force_dida=True))
    assert forced.mode is DecodeMode.DIDA


def test_unconditional_prompt_is_the_release_template(backend):
    from model_runtime.prompt import build_prompt, build_unconditional_prompt

    codes = np.array([[0, 1], [2, 131_071]])
    image = backend.layout.serialize_image(codes)
    expected = []
    for piece in re.split(r"(<\|[^|]+\|>)", OFFICIAL_UNCOND):
        if piece == "<|IMAGE|>":
            expected += image
        elif re.fullmatch(r"<\|[^|]+\|>", piece):
            expected.append(backend.text.token_id(piece))
        elif piece:
            expected += backend.text.encode(piece)
    unc = build_unconditional_prompt(backend.layout, backend.text, "clear the table", ["pick up the cup"], codes)
    assert unc == expected
    cond = build_prompt(backend.layout, backend.text, "clear the table", [], codes)
    assert backend.text.decode(cond[1 : cond.index(backend.layout.boi)]).startswith(
        "You are a helpful assistant for vla task. USER: clear the table"
    )


def test_dida_marker_makes_dida_the_default(release, tmp_path, frame):
    from model_runtime.backends.torch_backend import write_dida_marker

    lm_dir, tok_dir, _ = release
    copy = tmp_path / "weights" / "Emu3.5"
    shutil.copytree(lm_dir, copy)
    write_dida_marker(copy, stage="dida", steps=1)
    b = load_backend("torch", model_path=copy, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True,
                     vision_tokenizer_path=lm_dir.parent / "Emu3.5-VisionTokenizer", image_size=(8, 8))  # fmt: skip
    assert b.dida_adapted is True and b._options(DecodeOptions()).mode is DecodeMode.DIDA
    (copy / "dida_adapted.json").write_text("[1]")
    with pytest.raises(BackendError, match="dida_adapted.json"):
        load_backend("torch", model_path=copy, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True,
                     vision_tokenizer_path=lm_dir.parent / "Emu3.5-VisionTokenizer", image_size=(8, 8))  # fmt: skip


def test_missing_vision_tokenizer_is_named(release, tmp_path):
    lm_dir, tok_dir, _ = release
    alone = tmp_path / "alone"
    shutil.copytree(lm_dir, alone)
    with pytest.raises(BackendError, match="no vision tokenizer found.*Emu3.5-VisionTokenizer.*vision_tokenizer_path"):
        load_backend("torch", model_path=alone, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True)


def test_emu3_v1_originals_are_refused_naming_the_hf_conversions(release, tmp_path):
    from model_runtime.lm import LMLoadError, load_lm

    lm_dir, _, _ = release
    v1 = tmp_path / "v1"
    shutil.copytree(lm_dir, v1)
    cfg = release_config()
    (v1 / "config.json").write_text(json.dumps({**cfg, "vocab_size": 184_622}))
    with pytest.raises(LMLoadError, match="original Emu3 \\(v1\\).*Emu3-Gen-hf"):
        load_lm(v1)
    # Same model_type and vocabulary as Emu3.5 but a Llama block (no QK-norm weights): refused too.
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=282_926, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=8)).save_pretrained(llama)  # fmt: skip
    (llama / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LMLoadError, match="no QK-norm.*-hf"):
        load_lm(llama)
    (llama / "config.json").write_text(json.dumps({**cfg, "model_type": "emu3"}))
    with pytest.raises(LMLoadError, match="transformers Emu3 checkpoint.*emu3 backend"):
        load_lm(llama)
    (llama / "config.json").write_text(json.dumps({**cfg, "architectures": ["Emu3ForConditionalGeneration"]}))
    with pytest.raises(LMLoadError, match="expected \\['Emu3ForCausalLM'\\]"):
        load_lm(llama)


def test_release_defaults_without_explicit_fields(tmp_path):
    """Fields the release config may leave out take the release class's defaults (head_dim 128, rope 1e6)."""
    from model_runtime.lm import lm_qwen3_config

    d = tmp_path / "c"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "Emu3", "vocab_size": 282_926, "hidden_size": 5120,
                                               "num_attention_heads": 64, "num_hidden_layers": 64,
                                               "intermediate_size": 25600}))  # fmt: skip
    qcfg, fmt = lm_qwen3_config(d)
    assert fmt == "emu3.5-release" and qcfg.head_dim == 128 and qcfg.num_key_value_heads == 8
    assert qcfg.rope_parameters["rope_theta"] == 1e6 and qcfg.rms_norm_eps == 1e-5 and not qcfg.tie_word_embeddings


def test_dtype_defaults():
    from model_runtime.lm import default_dtype

    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda") == torch.bfloat16 and default_dtype("cpu", device_map="auto") == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_release_loads_in_bf16_on_cuda(release):
    lm_dir, tok_dir, _ = release
    b = load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True,
                     device="cuda", image_size=(8, 8))  # fmt: skip
    assert b.lm.dtype == torch.bfloat16 and b.lm.device.type == "cuda"
    b2 = load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True,
                      device="cuda", device_map="auto", image_size=(8, 8))  # fmt: skip
    assert b2.lm.dtype == torch.bfloat16


def test_device_map_without_gpu_is_refused(release):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    lm_dir, tok_dir, _ = release
    with pytest.raises(BackendError, match="device_map='auto' needs CUDA GPUs"):
        load_backend("torch", model_path=lm_dir, layout="emu35", text_tokenizer_path=tok_dir, trust_remote_code=True,
                     device_map="auto")  # fmt: skip


def test_write_lm_helper_shapes(tmp_path):
    """The fixture's own check: the release config and the saved weights agree (a broken fixture fails here)."""
    model = write_lm(tmp_path / "m", hidden=32, heads=4, kv_heads=2, head_dim=8)
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (8,)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_key_value_heads"] == 2
