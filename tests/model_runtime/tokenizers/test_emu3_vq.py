import json

import numpy as np
import pytest

from model_runtime.tokenizers import VisionTokenizerError, load_vision_tokenizer
from model_runtime.tokenizers.emu3_vq import Emu3VQTokenizer


@pytest.fixture(scope="module")
def tiny():
    from transformers import Emu3VQVAEConfig

    cfg = Emu3VQVAEConfig(
        codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
        num_res_blocks=1, attn_resolutions=[], hidden_size=64, num_attention_heads=1, temporal_downsample_factor=4,
    )  # fmt: skip
    return Emu3VQTokenizer.from_config(cfg, seed=0)


def test_shapes_and_round_trip_through_our_interface(tiny, tmp_path):
    assert (tiny.num_codes, tiny.downsample, tiny.image_size) == (64, 2, None)
    x = np.random.default_rng(0).integers(0, 256, size=(2, 16, 24, 3), dtype=np.uint8)
    codes = tiny.encode(x)
    assert codes.shape == (2, 8, 12) and codes.dtype == np.int64 and codes.max() < 64
    images = tiny.decode(codes)
    assert images.shape == (2, 16, 24, 3) and images.dtype == np.uint8
    # Same codes as calling transformers' Emu3VQVAE directly.
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
        direct = torch.stack(tiny.vq.encode(xt, torch.tensor([[16, 24]] * 2)).image_tokens)
    assert np.array_equal(direct.numpy(), codes)

    tiny.save(tmp_path / "emu3")
    back = load_vision_tokenizer(tmp_path / "emu3")
    assert isinstance(back, Emu3VQTokenizer)
    assert np.array_equal(back.encode(x), codes) and np.array_equal(back.decode(codes), images)
    with pytest.raises(VisionTokenizerError, match="not a multiple of 2"):
        tiny.encode(np.zeros((1, 15, 16, 3), np.uint8))
    with pytest.raises(VisionTokenizerError, match=r"\[0, 64\)"):
        tiny.decode(np.full((1, 4, 4), 64))


def test_load_errors(tiny, tmp_path):
    with pytest.raises(VisionTokenizerError, match="no config.json"):
        Emu3VQTokenizer.load(tmp_path)
    tiny.save(tmp_path / "bad")
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["codebook_size"] = 128
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VisionTokenizerError, match="do not match|cannot load"):
        Emu3VQTokenizer.load(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").unlink()
    with pytest.raises(VisionTokenizerError, match="no weights"):
        Emu3VQTokenizer.load(tmp_path / "bad")


def test_loads_the_tokenizer_out_of_a_full_emu3_checkpoint(tmp_path):
    """A saved Emu3ForConditionalGeneration (tiny, random): only its vqmodel.* weights are read."""
    import torch
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    vq = dict(codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
              num_res_blocks=1, attn_resolutions=[], hidden_size=64, num_attention_heads=1)  # fmt: skip
    text = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    full = Emu3ForConditionalGeneration(Emu3Config(vq_config=vq, text_config=text, vocabulary_map={})).eval()
    full.save_pretrained(str(tmp_path / "full"))
    tok = load_vision_tokenizer(tmp_path / "full")
    assert isinstance(tok, Emu3VQTokenizer) and tok.num_codes == 64
    wrapped = Emu3VQTokenizer(full.model.vqmodel)  # the in-memory way
    x = np.random.default_rng(1).integers(0, 256, size=(1, 8, 8, 3), dtype=np.uint8)
    codes = wrapped.encode(x)
    assert np.array_equal(tok.encode(x), codes) and np.array_equal(tok.decode(codes), wrapped.decode(codes))

    cfg = json.loads((tmp_path / "full" / "config.json").read_text())
    cfg["vq_config"]["embed_dim"] = 8
    (tmp_path / "full" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VisionTokenizerError, match="shape mismatch"):
        Emu3VQTokenizer.load(tmp_path / "full")
