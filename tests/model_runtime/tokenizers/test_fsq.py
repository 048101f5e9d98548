import json

import numpy as np
import pytest
import torch

from model_runtime.tokenizers import VisionTokenizerError, load_vision_tokenizer
from model_runtime.tokenizers.fsq import FSQ, FSQAutoencoder, FSQConfig, FSQTokenizer, fsq_loss


@pytest.fixture(scope="module")
def tok():
    return FSQTokenizer.from_config(FSQConfig(), seed=0)


def frames(n=2, size=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_default_config_is_96px_12x12_1000_codes(tok):
    assert (tok.num_codes, tok.downsample, tok.image_size, tok.code_grid()) == (1000, 8, (96, 96), (12, 12))
    codes = tok.encode(frames())
    assert isinstance(codes, np.ndarray) and codes.shape == (2, 12, 12) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 1000
    images = tok.decode(codes)
    assert images.shape == (2, 96, 96, 3) and images.dtype == np.uint8
    # torch in -> torch out
    t = tok.encode(torch.from_numpy(frames()))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and torch.equal(t, torch.from_numpy(codes))
    assert isinstance(tok.decode(t), torch.Tensor)
    assert tok.encode_one(frames()[0]).shape == (12, 12) and tok.decode_one(codes[0]).shape == (96, 96, 3)


def test_fsq_code_mapping_is_a_bijection_and_exact():
    fsq = FSQ((8, 5, 5, 5))
    all_codes = torch.arange(1000).view(1, 10, 100)
    levels = fsq.codes_to_levels(all_codes)  # (1, 4, 10, 100) in [-1, 1]
    assert levels.min() >= -1 and levels.max() <= 1
    # Distinct codes -> distinct level tuples.
    assert torch.unique(levels.reshape(4, -1).T, dim=0).shape[0] == 1000
    # Quantising random latents: the levels returned equal those rebuilt from the codes (exact decode).
    z = torch.randn(3, 4, 6, 6) * 3
    q, codes = fsq(z)
    assert codes.min() >= 0 and codes.max() < 1000
    assert torch.equal(fsq.codes_to_levels(codes), q)
    # Every level of every channel is reachable (no dead codes by construction).
    torch.manual_seed(0)
    _, codes = fsq(torch.randn(4, 4, 200, 200) * 1.5)
    assert torch.unique(codes).numel() == 1000


def test_decode_of_codes_equals_the_training_forward(tok):
    x = frames(seed=3)
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
        recon, codes = tok.model(xt)
    assert np.array_equal(tok.encode(x), codes.numpy())
    expected = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(tok.decode(codes.numpy()), expected)


def test_bad_input_errors(tok):
    with pytest.raises(VisionTokenizerError, match="images are 64x64 but this tokenizer takes 96x96"):
        tok.encode(frames(size=64))
    with pytest.raises(VisionTokenizerError, match="uint8"):
        tok.encode(frames().astype(np.float32))
    with pytest.raises(VisionTokenizerError, match="3 RGB channels"):
        tok.encode(np.zeros((1, 96, 96, 4), np.uint8))
    with pytest.raises(VisionTokenizerError, match=r"\(B, H, W, 3\)"):
        tok.encode(frames()[0])
    with pytest.raises(VisionTokenizerError, match="numpy array or torch tensor"):
        tok.encode([[1, 2, 3]])
    with pytest.raises(VisionTokenizerError, match=r"codes must be in \[0, 1000\), got range \[1000, 1000\]"):
        tok.decode(np.full((1, 12, 12), 1000))
    with pytest.raises(VisionTokenizerError, match=r"got range \[-1"):
        tok.decode(np.full((1, 12, 12), -1))
    with pytest.raises(VisionTokenizerError, match="code grid is 8x8"):
        tok.decode(np.zeros((1, 8, 8), np.int64))
    with pytest.raises(VisionTokenizerError, match="integers"):
        tok.decode(np.zeros((1, 12, 12), np.float32))
    with pytest.raises(ValueError, match="multiple of 8"):
        FSQConfig(image_size=100)
    with pytest.raises(ValueError, match="levels"):
        FSQConfig(levels=(8, 1))


def test_save_load_round_trip_and_errors(tok, tmp_path):
    tok.save(tmp_path / "fsq")
    back = load_vision_tokenizer(tmp_path / "fsq")
    assert isinstance(back, FSQTokenizer) and back.config == tok.config
    x = frames(seed=5)
    codes = tok.encode(x)
    assert np.array_equal(back.encode(x), codes) and np.array_equal(back.decode(codes), tok.decode(codes))

    cfg = json.loads((tmp_path / "fsq" / "config.json").read_text())
    cfg["channels"] = [32, 64, 128]
    (tmp_path / "fsq" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VisionTokenizerError, match="does not match the model config: .*shape mismatch"):
        FSQTokenizer.load(tmp_path / "fsq")
    cfg["bogus"] = 1
    (tmp_path / "fsq" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VisionTokenizerError, match="unknown keys"):
        FSQTokenizer.load(tmp_path / "fsq")
    tok.save(tmp_path / "fsq2")
    (tmp_path / "fsq2" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(VisionTokenizerError, match="cannot read"):
        FSQTokenizer.load(tmp_path / "fsq2")
    with pytest.raises(VisionTokenizerError, match="missing"):
        FSQTokenizer.load(tmp_path / "nothing")
    with pytest.raises(VisionTokenizerError, match="does not exist"):
        load_vision_tokenizer(tmp_path / "nothing")


def test_loss_and_a_short_training_run_reduce_the_error():
    recon = torch.zeros(1, 3, 8, 8)
    assert fsq_loss(recon, recon)[0].item() == 0.0
    with pytest.raises(ValueError, match="differ"):
        fsq_loss(recon, torch.zeros(1, 3, 4, 4))
    # A tiny model learns to reconstruct a few flat-coloured frames: gradients pass the rounding (STE).
    torch.manual_seed(0)
    model = FSQAutoencoder(FSQConfig(image_size=16, channels=(16, 16), out_channels=8))
    x = torch.full((4, 3, 16, 16), -0.6)
    for i in range(4):
        x[i, i % 3, 2 + 2 * i : 8 + 2 * i, 3:9] = 0.8  # a coloured square per frame
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(50):
        loss, parts = fsq_loss(model(x)[0], x)
        first = first if first is not None else parts["loss"]
        opt.zero_grad()
        loss.backward()
        assert model.encoder[0].weight.grad.abs().sum() > 0  # the encoder is trained through FSQ
        opt.step()
    assert parts["loss"] < 0.3 * first


def test_object_weight_emphasises_pixels_that_stand_out_from_the_table():
    from model_runtime.tokenizers.fsq import object_pixel_mask

    table = torch.full((1, 3, 32, 32), 0.2)
    img = table.clone()
    img[:, 0, 12:16, 12:16] = 0.9  # a small red object
    mask = object_pixel_mask(img)
    assert mask[0, 0, 12:16, 12:16].all() and mask[0, 0, :4, :4].sum() == 0
    lost_object = fsq_loss(table, img, object_weight=4.0)[0]  # recon drops the object
    assert lost_object > 2 * fsq_loss(table, img)[0]
    noisy_table = img.clone()
    noisy_table[:, :, :4, :4] += 0.7  # the same error on plain table pixels counts less when weighted
    assert fsq_loss(noisy_table, img, object_weight=4.0)[0] < fsq_loss(noisy_table, img)[0]
    with pytest.raises(ValueError, match="object_weight"):
        fsq_loss(img, img, object_weight=-1.0)
