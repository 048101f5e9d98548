"""Evaluate a vision tokenizer on simulation frames: reconstruction PSNR and object-position error.

``sim_frames("heldout", ...)`` renders reset frames and ground-truth subgoal frames of every
registered sim task from seeds of one split (never mix: training uses ``"train"``, evaluation
``"heldout"``); ``evaluate_tokenizer`` encodes and decodes them and reports:

- PSNR (dB) per frame, mean and median;
- object-position error (``model_runtime.image_metrics.object_position_error``): mean centroid distance
  in pixels and in metres on the table plane (through each frame's ``CameraModel``), and the
  fraction of objects missing from the reconstruction;
- codebook use: the fraction of codes used and the code perplexity over the frames.

``save_reconstruction_png`` writes originals above reconstructions for people to look at.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emu_guide.types import CameraModel
from model_runtime.image_metrics import object_position_error, psnr
from model_runtime.tokenizers.base import VisionTokenizer, VisionTokenizerError

__all__ = ["FrameSet", "TokenizerEval", "evaluate_tokenizer", "save_reconstruction_png", "sim_frames"]


@dataclass
class FrameSet:
    frames: np.ndarray  # (N, H, W, 3) uint8
    cameras: list[CameraModel]  # one per frame
    sources: list[str]  # "env_id:seed:index" per frame


def sim_frames(
    split: str = "heldout",
    episodes_per_env: int = 4,
    env_ids: tuple[str, ...] | None = None,
    subgoals: bool = True,
    offset: int = 0,
) -> FrameSet:
    """Reset frames (+ ground-truth subgoal frames) of ``episodes_per_env`` seeds of ``split`` per task."""
    import gymnasium as gym

    import sim_envs
    from sim_envs.seeds import seeds_for

    frames, cameras, sources = [], [], []
    for env_id in env_ids or sim_envs.ENV_IDS:
        env = gym.make(env_id)
        try:
            for seed in seeds_for(split, episodes_per_env, offset=offset):
                obs, _ = env.reset(seed=seed)
                u = env.unwrapped
                shots = [obs["image"]] + (list(u.subgoal_images()) if subgoals else [])
                for i, img in enumerate(shots):
                    frames.append(np.asarray(img, dtype=np.uint8))
                    cameras.append(u.camera)
                    sources.append(f"{env_id}:{seed}:{i}")
        finally:
            env.close()
    return FrameSet(frames=np.stack(frames), cameras=cameras, sources=sources)


@dataclass
class TokenizerEval:
    num_frames: int
    psnr_mean: float  # dB, mean of per-frame PSNR
    psnr_median: float
    position_error_px: float  # mean over matched objects of all frames
    position_error_m: float | None  # same on the table plane (None without cameras)
    objects: int  # objects found in the originals
    missing_rate: float  # fraction of those not found (within max_match_cells) in the reconstructions
    code_usage: float  # fraction of the codebook used on these frames
    code_perplexity: float  # exp(entropy) of the code histogram
    ms_per_frame: float  # encode + decode wall clock, batched

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_tokenizer(
    tokenizer: VisionTokenizer,
    frames: np.ndarray | FrameSet,
    cameras: list[CameraModel] | None = None,
    batch_size: int = 32,
    return_reconstructions: bool = False,
    max_match_cells: float = 2.0,
) -> TokenizerEval | tuple[TokenizerEval, np.ndarray]:
    """Reconstruct ``frames`` (N, H, W, 3) uint8 through the tokenizer and score the result.

    An object whose reconstruction lies more than ``max_match_cells`` code cells away (16 px for the
    default tokenizer) counts as missing rather than as a large position error.
    """
    if isinstance(frames, FrameSet):
        cameras = cameras if cameras is not None else frames.cameras
        frames = frames.frames
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VisionTokenizerError(f"evaluate_tokenizer: expected (N, H, W, 3) frames, got shape {frames.shape}")
    if cameras is not None and len(cameras) != len(frames):
        raise ValueError(f"evaluate_tokenizer: {len(cameras)} cameras for {len(frames)} frames")
    recons, all_codes = [], []
    t0 = time.perf_counter()
    for s in range(0, len(frames), batch_size):
        codes = tokenizer.encode(frames[s : s + batch_size])
        all_codes.append(codes.reshape(-1))
        recons.append(tokenizer.decode(codes))
    elapsed = time.perf_counter() - t0
    recon = np.concatenate(recons)

    psnrs = np.array([min(psnr(a, b), 100.0) for a, b in zip(frames, recon)])  # cap identical frames at 100 dB
    px, m, objects, missing = [], [], 0, 0
    for i, (a, b) in enumerate(zip(frames, recon)):
        cam = cameras[i] if cameras is not None else None
        err = object_position_error(b, a, camera=cam, max_match_px=max_match_cells * tokenizer.downsample)
        objects += err.num_objects
        missing += len(err.missing)
        px += list(err.per_object_px.values())
        if cam is not None and err.matched:
            m.append((err.mean_m, err.matched))
    hist = np.bincount(np.concatenate(all_codes), minlength=tokenizer.num_codes).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    result = TokenizerEval(
        num_frames=len(frames),
        psnr_mean=float(psnrs.mean()),
        psnr_median=float(np.median(psnrs)),
        position_error_px=float(np.mean(px)) if px else float("nan"),
        position_error_m=(float(sum(e * n for e, n in m) / sum(n for _, n in m)) if m else None),
        objects=objects,
        missing_rate=missing / objects if objects else 0.0,
        code_usage=float((hist > 0).mean()),
        code_perplexity=float(np.exp(-(p * np.log(p)).sum())),
        ms_per_frame=1000.0 * elapsed / len(frames),
    )
    return (result, recon) if return_reconstructions else result


def save_reconstruction_png(frames: np.ndarray, recon: np.ndarray, path: str | Path, max_frames: int = 12) -> Path:
    """Originals (top row) above reconstructions (bottom row), 2x nearest upscaling, as PNG."""
    import cv2

    n = min(max_frames, len(frames))
    top = np.concatenate(list(frames[:n]), axis=1)
    bottom = np.concatenate(list(recon[:n]), axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    grid = cv2.resize(grid, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return path
