"""model_runtime.lm: the default architecture, checkpoint save/load and its checks."""

from __future__ import annotations

import json

import pytest
import torch

from model_runtime.layout import compact, emu35
from model_runtime.lm import LMConfig, LMLoadError, build_lm, count_params, load_lm, pick_attn_implementation, save_lm


@pytest.fixture(scope="module")
def layout():
    return compact(30, 50)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, layout):
    cfg = LMConfig(vocab_size=layout.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                   intermediate_size=64)  # fmt: skip
    model = build_lm(cfg, attn_implementation="eager")
    return save_lm(model, tmp_path_factory.mktemp("lm"), cfg), model


def test_default_config_is_a_small_qwen3():
    cfg = LMConfig()
    q = cfg.to_qwen3()
    assert q.model_type == "qwen3" and q.num_key_value_heads < q.num_attention_heads  # GQA
    model = build_lm(LMConfig(vocab_size=1_300))
    assert model.model.layers[0].self_attn.q_norm is not None  # QK-norm
    assert 500_000 < count_params(model) < 2_000_000
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        LMConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="hidden_size"):
        LMConfig(hidden_size=0)
    big = LMConfig.emu35_shaped(vocab_size=1_300, hidden_size=1024)
    assert big.num_heads // big.num_kv_heads == 8 and big.intermediate_size == 5 * 1024 and big.head_dim == 128


def test_round_trip_same_logits(saved, layout):
    path, model = saved
    again = load_lm(path, layout, attn_implementation="eager")
    ids = torch.randint(0, layout.vocab_size, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
    assert json.loads((path / "lm_config.json").read_text())["hidden_size"] == 32
    assert again.config._attn_implementation == "eager"


def test_load_checks(saved, layout, tmp_path):
    path, _ = saved
    with pytest.raises(LMLoadError, match="smaller than layout 'emu35'"):
        load_lm(path, emu35())
    with pytest.raises(LMLoadError, match="compact layout vocab_size"):
        load_lm(path, compact(29, 50))
    with pytest.raises(LMLoadError, match="does not exist"):
        load_lm(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LMLoadError, match=r"config\.json: missing"):
        load_lm(tmp_path / "empty")
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LMLoadError, match="not Qwen3-compatible"):
        load_lm(other)
    # a checkpoint with a tensor removed: transformers would initialise it at random; we refuse
    from safetensors.torch import load_file, save_file

    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((path / "config.json").read_text())
    state = load_file(str(path / "model.safetensors"))
    state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, str(cut / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LMLoadError, match="weights missing"):
        load_lm(cut)


def test_attention_implementation_choice():
    assert pick_attn_implementation("cpu") == "sdpa"
    from emu_guide.optional import available

    expected = "flash_attention_2" if available("flash_attn") else "sdpa"
    assert pick_attn_implementation("cuda") == expected
