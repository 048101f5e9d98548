"""Video colour fidelity: full-resolution chroma, lossless coding, and the fast YUV -> RGB path."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from ds_helpers import CAM, make_episode

from finetune_embodied.datasets import LeRobotV3Writer, open_dataset, write_dataset
from finetune_embodied.datasets.video import VideoWriter, decode_frames, frame_to_rgb


def thin_stripes(n: int = 6, size: int = 32) -> np.ndarray:
    """Frames of 1-px coloured lines on grey: what 4:2:0 chroma subsampling smears."""
    rng = np.random.default_rng(0)
    frames = np.full((n, size, size, 3), 128, dtype=np.uint8)
    for t in range(n):
        for col in range(2, size - 2, 4):
            frames[t, :, col] = rng.integers(0, 256, 3)
    return frames


def write_video(path, frames, **kw) -> None:
    vw = VideoWriter(path, 10, frames.shape[2], frames.shape[1], **kw)
    vw.write(frames)
    vw.close()


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_fast_conversion_matches_swscale(tmp_path, pix_fmt):
    frames = thin_stripes()
    write_video(tmp_path / "v.mp4", frames, pix_fmt=pix_fmt, crf=10)
    with av.open(str(tmp_path / "v.mp4")) as c:
        decoded = list(c.decode(video=0))
    assert decoded[0].format.name == pix_fmt
    ours = np.stack([frame_to_rgb(f) for f in decoded]).astype(int)
    ref = np.stack([f.to_ndarray(format="rgb24") for f in decoded]).astype(int)
    assert ours.shape == ref.shape == frames.shape
    assert np.abs(ours - ref).max() <= 4 and np.abs(ours - ref).mean() < 1.5


def test_yuv444_crf0_keeps_thin_colour_lines_that_yuv420_loses(tmp_path):
    frames = thin_stripes()
    write_video(tmp_path / "420.mp4", frames, pix_fmt="yuv420p", crf=20)
    write_video(tmp_path / "444.mp4", frames, pix_fmt="yuv444p", crf=0)
    err = {}
    for name in ("420", "444"):
        got = decode_frames(tmp_path / f"{name}.mp4", 10, 0.0, len(frames) / 10)
        err[name] = np.abs(got.astype(int) - frames.astype(int)).max()
    assert err["444"] <= 3  # lossless in YUV; RGB <-> YUV rounding only
    assert err["420"] > 30


def test_dataset_records_its_pixel_format(tmp_path):
    root = write_dataset(tmp_path / "ds", [make_episode(6, 0)], fps=10, pix_fmt="yuv444p", crf=0)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"][CAM]["info"]["video.pix_fmt"] == "yuv444p"
    ep = next(open_dataset(root).iter_episodes())
    assert np.abs(ep.images[CAM].astype(int) - make_episode(6, 0).images[CAM].astype(int)).max() <= 3


def test_bad_video_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pix_fmt"):
        VideoWriter(tmp_path / "v.mp4", 10, 32, 32, pix_fmt="rgb24")
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(tmp_path / "v.mp4", 10, 32, 32, crf=60)
    with pytest.raises(ValueError, match="pix_fmt"):
        LeRobotV3Writer(tmp_path / "ds", 10, {"front": (32, 32)}, ["s"], ["a"], pix_fmt="nv12")


def test_max_episodes_reads_an_evenly_spaced_subset(tmp_path):
    root = write_dataset(tmp_path / "ds", [make_episode(4, i) for i in range(7)], fps=10)
    reader = open_dataset(root)
    assert [e.episode_index for e in reader.iter_episodes(load_images=False, max_episodes=3)] == [0, 3, 6]
    assert len(list(reader.iter_episodes(load_images=False, max_episodes=0))) == 7
    assert len(list(reader.iter_episodes(load_images=False, max_episodes=50))) == 7
    with pytest.raises(ValueError, match="max_episodes"):
        list(reader.iter_episodes(max_episodes=-1))
