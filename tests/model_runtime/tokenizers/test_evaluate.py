import numpy as np
import pytest

from finetune_embodied.tokenizer_eval import evaluate_tokenizer, save_reconstruction_png, sim_frames
from model_runtime.image_metrics import object_position_error, psnr
from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer
from model_runtime.tokenizers.train import train_fsq_tokenizer


@pytest.fixture(scope="module")
def heldout():
    return sim_frames("heldout", episodes_per_env=1, subgoals=False)


def test_sim_frames_come_from_the_requested_split(heldout):
    import sim_envs
    from sim_envs.seeds import HELDOUT_SEEDS

    assert heldout.frames.shape[0] == len(sim_envs.ENV_IDS) and heldout.frames.dtype == np.uint8
    assert all(int(s.split(":")[1]) in HELDOUT_SEEDS for s in heldout.sources)
    assert len(heldout.cameras) == len(heldout.frames)
    with pytest.raises(ValueError, match="unknown seed split"):
        sim_frames("test", episodes_per_env=1)


def test_objects_are_found_in_sim_frames_and_match_themselves(heldout):
    for frame, cam in zip(heldout.frames, heldout.cameras):
        err = object_position_error(frame, frame, camera=cam)
        assert err.matched >= 2 and err.missing == []
        assert err.mean_px == 0.0 and err.mean_m == 0.0


def test_evaluate_reports_consistent_metrics(heldout, tmp_path):
    tok = FSQTokenizer.from_config(FSQConfig(), seed=0)  # untrained: low PSNR, metrics still well defined
    result, recon = evaluate_tokenizer(tok, heldout, return_reconstructions=True)
    assert recon.shape == heldout.frames.shape and result.num_frames == len(heldout.frames)
    per_frame = [psnr(a, b) for a, b in zip(heldout.frames, recon)]
    assert result.psnr_mean == pytest.approx(np.mean(per_frame))
    assert result.objects > 0 and 0.0 <= result.missing_rate <= 1.0
    assert 0 < result.code_usage <= 1 and result.code_perplexity >= 1
    png = save_reconstruction_png(heldout.frames, recon, tmp_path / "recon.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="cameras for"):
        evaluate_tokenizer(tok, heldout.frames, cameras=heldout.cameras[:1])


def test_train_fsq_tokenizer_runs_and_validates():
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    cfg = FSQConfig(image_size=16, channels=(8, 8), out_channels=8)
    tok, log = train_fsq_tokenizer(frames, steps=3, batch_size=2, config=cfg, progress=False)
    assert len(log) == 3 and tok.encode(frames).shape == (4, 4, 4)
    with pytest.raises(ValueError, match="uint8"):
        train_fsq_tokenizer(frames.astype(np.float32), steps=1, config=cfg, progress=False)
    with pytest.raises(ValueError, match="the tokenizer takes 16x16"):
        train_fsq_tokenizer(np.zeros((2, 32, 32, 3), np.uint8), steps=1, config=cfg, progress=False)
