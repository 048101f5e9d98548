import numpy as np
import pytest
import torch
import yaml

from model_runtime.tokenizers import VisionTokenizerError, load_vision_tokenizer
from model_runtime.tokenizers.ibq import IBQConfig, IBQTokenizer, Quantize

TINY = IBQConfig(
    ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=16, resolution=16,
    n_embed=97, embed_dim=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return IBQTokenizer.from_config(TINY, seed=0)


def images(n=2, h=16, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_parameter_names_follow_the_published_checkpoint(tiny):
    keys = set(tiny.model.state_dict())
    for k in [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",  # 32 -> 64 channels
        "encoder.down.1.attn.0.q.weight",  # attention at resolution 8
        "encoder.mid.attn_1.proj_out.weight",
        "encoder.norm_out.weight",
        "encoder.conv_out.weight",
        "quant_conv.weight",
        "quantize.embedding.weight",
        "post_quant_conv.weight",
        "decoder.conv_in.weight",
        "decoder.mid.block_2.conv2.weight",
        "decoder.up.2.block.1.conv1.weight",  # decoder: num_res_blocks + 1 blocks per level
        "decoder.up.2.upsample.conv.weight",
        "decoder.up.1.attn.1.v.weight",
        "decoder.conv_out.weight",
    ]:
        assert k in keys, k
    assert "decoder.up.0.upsample.conv.weight" not in keys and "encoder.down.2.downsample.conv.weight" not in keys
    assert tiny.model.state_dict()["quantize.embedding.weight"].shape == (97, 8)


def test_encode_decode_shapes(tiny):
    assert (tiny.num_codes, tiny.downsample) == (97, 4)
    x = images()
    codes = tiny.encode(x)
    assert codes.shape == (2, 4, 8) and codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < 97
    assert tiny.decode(codes).shape == (2, 16, 32, 3)
    with pytest.raises(VisionTokenizerError, match="not a multiple of 4"):
        tiny.encode(images(h=18))
    with pytest.raises(VisionTokenizerError, match=r"\[0, 97\)"):
        tiny.decode(np.full((1, 2, 2), 97))


def test_chunked_code_search_equals_full_argmax():
    torch.manual_seed(0)
    q = Quantize(50, 6, l2_normalize=False)
    z = torch.randn(2, 6, 3, 5)
    full = torch.einsum("bdhw,nd->bnhw", z, q.embedding.weight).argmax(dim=1)
    assert torch.equal(q.codes(z, chunk=7), full)
    qn = Quantize(50, 6, l2_normalize=True)
    e = torch.nn.functional.normalize(qn.embedding.weight, dim=1)
    full_n = torch.einsum("bdhw,nd->bnhw", torch.nn.functional.normalize(z, dim=1), e).argmax(dim=1)
    assert torch.equal(qn.codes(z, chunk=16), full_n)


def test_save_in_published_layout_and_load_back(tiny, tmp_path):
    tiny.save(tmp_path / "ibq")
    doc = yaml.safe_load((tmp_path / "ibq" / "config.yaml").read_text())
    assert doc["n_embed"] == 97 and doc["embed_dim"] == 8 and doc["ddconfig"]["ch_mult"] == [1, 2, 2]
    assert "state_dict" in torch.load(tmp_path / "ibq" / "model.ckpt", weights_only=True)
    back = load_vision_tokenizer(tmp_path / "ibq")
    assert isinstance(back, IBQTokenizer)
    x = images(seed=1)
    codes = tiny.encode(x)
    assert np.array_equal(back.encode(x), codes) and np.array_equal(back.decode(codes), tiny.decode(codes))

    # A bare state dict (no "state_dict" wrapper), training-only config keys and loss.* weights load too.
    state = {k: v for k, v in tiny.model.state_dict().items()}
    state["loss.discriminator.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "ibq" / "model.ckpt")
    doc["beta"], doc["use_entropy_loss"] = 0.25, True
    (tmp_path / "ibq" / "config.yaml").write_text(yaml.safe_dump(doc))
    again = IBQTokenizer.load(tmp_path / "ibq", image_size=(16, 32))
    assert np.array_equal(again.encode(x), codes) and again.image_size == (16, 32)
    assert again.config.ignored == {"beta": 0.25, "use_entropy_loss": True}


def test_load_errors_name_the_problem(tiny, tmp_path):
    d = tmp_path / "ibq"
    with pytest.raises(VisionTokenizerError, match="missing .*config.yaml"):
        IBQTokenizer.load(d)
    tiny.save(d)
    good_cfg = (d / "config.yaml").read_text()
    state = tiny.model.state_dict()

    renamed = dict(state)
    renamed["encoder.conv_in.weightX"] = renamed.pop("encoder.conv_in.weight")
    torch.save({"state_dict": renamed}, d / "model.ckpt")
    with pytest.raises(
        VisionTokenizerError, match=r"missing 1 keys \(e.g. \['encoder.conv_in.weight'\]\).*unexpected 1"
    ):
        IBQTokenizer.load(d)

    torch.save({"state_dict": state}, d / "model.ckpt")
    doc = yaml.safe_load(good_cfg)
    doc["n_embed"] = 100
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(VisionTokenizerError, match="shape mismatch.*quantize.embedding.weight"):
        IBQTokenizer.load(d)
    del doc["ddconfig"]["ch_mult"]
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(VisionTokenizerError, match=r"missing keys \['ch_mult'\]"):
        IBQTokenizer.load(d)
    (d / "config.yaml").write_text("ddconfig: [unclosed")
    with pytest.raises(VisionTokenizerError, match="not valid YAML"):
        IBQTokenizer.load(d)

    (d / "config.yaml").write_text(good_cfg)
    (d / "model.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(VisionTokenizerError, match="cannot read .*model.ckpt"):
        IBQTokenizer.load(d)
    torch.save([1, 2, 3], d / "model.ckpt")
    with pytest.raises(VisionTokenizerError, match="no state dict"):
        IBQTokenizer.load(d)
    (d / "model.ckpt").unlink()
    with pytest.raises(VisionTokenizerError, match="missing .*model.ckpt"):
        IBQTokenizer.load(d)
