"""Stage ``tokenizer``: train the default vision tokenizer (``model_runtime.tokenizers.fsq``) on camera frames.

Loss: ``model_runtime.tokenizers.fsq.fsq_loss`` (L1 + MSE + edge term) on the reconstruction through the
quantiser. FSQ's quantiser has no parameters, so there is no codebook or commitment loss to add:
the quantisation is trained through the straight-through rounding inside the reconstruction loss;
codebook usage is logged instead (``code_usage``: fraction of the codes used in the batch).
Held-out evaluation: reconstruction PSNR and object-position error (``model_runtime.image_metrics``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_embodied.train.checkpoint import CheckpointError, load_weights
from finetune_embodied.train.stages.base import Stage, split_heldout

VISION_DIR = "vision_tokenizer"  # inside a tokenizer-stage checkpoint: a loadable tokenizer directory


def load_tokenizer_or_checkpoint(path: str | Path, device: str = "cpu"):
    """A vision tokenizer from its directory, or from a tokenizer-stage checkpoint holding one."""
    from model_runtime.tokenizers import load_vision_tokenizer as _load

    p = Path(path)
    if (p / VISION_DIR).is_dir():
        p = p / VISION_DIR
    return _load(p, device=device)


def frames_from_dataset(cfg, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int], str]:
    """Frames (resized) and their episode index from a LeRobot dataset (v3.x or v2.x); the skip report text."""
    from finetune_embodied.datasets import open_dataset
    from model_runtime.tokenizers import resize_image

    d = cfg.data
    reader = open_dataset(d.path, on_error=d.on_error)
    key = camera_key(reader.camera_keys, d.camera, d.path)
    announce_resize(reader, key, d.image_size)
    frames: list[np.ndarray] = []
    groups: list[int] = []
    for ep in reader.iter_episodes(max_episodes=d.max_episodes):
        video = ep.images[key]
        idx = np.arange(len(video))
        if d.frames_per_episode and len(idx) > d.frames_per_episode:
            idx = np.sort(rng.choice(idx, size=d.frames_per_episode, replace=False))
        for i in idx:
            frames.append(resize_image(video[i], (d.image_size, d.image_size)))
            groups.append(ep.episode_index)
    return frames, groups, reader.report.summary() if reader.report.count else ""


def camera_key(keys: list[str], wanted: str, where: str) -> str:
    """The full feature key of the camera to read: ``wanted`` (full key or short name), or the only
    camera; several cameras and no choice is an error naming them (never a silent first pick)."""
    from finetune_embodied.datasets import DatasetError

    if not keys:
        raise DatasetError(f"dataset {where}: no camera (video) features; training needs camera frames")
    if not wanted:
        if len(keys) > 1:
            short = [k.removeprefix("observation.images.") for k in keys]
            raise DatasetError(f"dataset {where} has {len(keys)} cameras {short}: choose one with data.camera=<name>")
        return keys[0]
    for k in (wanted, f"observation.images.{wanted}"):
        if k in keys:
            return k
    raise DatasetError(f"dataset {where}: no camera {wanted!r}; it has {keys}")


def camera_shape(reader, key: str) -> tuple[int, int] | None:
    """(height, width) of a camera from info.json's feature (``shape`` is [H, W, C]; LeRobot also
    writes ``info.video.height/width``), or None when it does not say."""
    feat = reader.features.get(key, {})
    info = feat.get("info") or {}
    if "video.height" in info and "video.width" in info:
        return int(info["video.height"]), int(info["video.width"])
    shape = list(feat.get("shape") or [])
    names = list(feat.get("names") or [])
    if len(shape) == 3:
        if names[:1] == ["channels"] or (shape[0] == 3 and shape[2] != 3):  # (C, H, W)
            return int(shape[1]), int(shape[2])
        return int(shape[0]), int(shape[1])
    return None


def announce_resize(reader, key: str, image_size: int) -> str:
    """Say how frames become image_size x image_size: non-square frames are stretched (aspect ratio not
    kept), exactly what the runtime does with live frames (model_runtime.tokenizers.resize_image), so
    training and guidance see the same images. Returns the line (also printed); "" when square."""
    hw = camera_shape(reader, key)
    if hw is None or hw[0] == hw[1]:
        return ""
    h, w = hw
    line = (f"[data] camera {key}: frames are {h}x{w} (HxW), not square: each is stretched to "
            f"{image_size}x{image_size} (aspect ratio {w / h:.2f} -> 1; the guidance runtime resizes live frames "
            "the same way). Crop or pad the recording first to keep proportions.")
    print(line)
    return line


class TokenizerStage(Stage):
    name = "tokenizer"

    def __init__(self, cfg, info) -> None:
        super().__init__(cfg, info)
        d = cfg.data
        rng = np.random.default_rng(cfg.seed)
        self.data_report = ""
        if d.source == "synthetic":
            from finetune_embodied.train.synthetic import synthetic_frames

            frames = list(synthetic_frames(d.num_synthetic, d.image_size, cfg.seed))
            groups = list(range(len(frames)))
        else:
            frames, groups, self.data_report = frames_from_dataset(cfg, rng)
        if not frames:
            raise ValueError(f"stage 'tokenizer': no frames in {d.path or 'the synthetic source'} ({self.data_report})")
        self.train_set, self.eval_set = split_heldout(frames, groups, d.heldout_fraction)
        self.model: torch.nn.Module | None = None

    def fsq_config(self):
        from model_runtime.tokenizers.fsq import FSQConfig

        overrides = dict(self.cfg.model)
        size = overrides.pop("image_size", self.cfg.data.image_size)
        if size != self.cfg.data.image_size:
            raise ValueError(f"model.image_size {size} != data.image_size {self.cfg.data.image_size}")
        try:
            return FSQConfig(image_size=size, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model (FSQConfig): {exc}") from None

    def build_model(self) -> torch.nn.Module:
        from model_runtime.tokenizers.fsq import FSQAutoencoder

        self.model = FSQAutoencoder(self.fsq_config())
        return self.model

    def model_config(self) -> dict[str, Any]:
        return {"kind": "fsq", "fsq": self.fsq_config().to_dict()}

    def load_init(self, model: torch.nn.Module, path: str | Path) -> None:
        p = Path(path)
        p = p / VISION_DIR if (p / VISION_DIR).is_dir() else p
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(f"init_from {str(path)!r}: no tokenizer weights (model.safetensors)")
        missing, unexpected = model.load_state_dict(load_weights(p / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"init_from {str(path)!r} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def collate(self, samples: list[np.ndarray]) -> dict[str, Any]:
        x = torch.from_numpy(np.stack(samples)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        return {"images": x}

    def loss(self, model, batch, gen):
        from model_runtime.tokenizers.fsq import fsq_loss

        recon, codes = model(batch["images"])
        loss, parts = fsq_loss(recon.float(), batch["images"], object_weight=self.cfg.data.object_loss_weight)
        parts.pop("loss", None)
        n_codes = self.fsq_config().num_codes
        parts["code_usage"] = float(torch.unique(codes).numel()) / min(n_codes, codes.numel())
        return loss, parts

    def evaluate(self, model) -> dict[str, float]:
        from model_runtime.image_metrics import object_position_error, psnr

        samples = self.eval_samples()
        if not samples:
            return {}
        psnrs, errs, found, total = [], [], 0, 0
        bs = self.cfg.eval.batch_size
        for i in range(0, len(samples), bs):
            x = self.collate(samples[i : i + bs])["images"].to(self.info.device)
            recon, _ = model(x)
            imgs = ((recon.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for pred, ref in zip(imgs, samples[i : i + bs]):
                psnrs.append(min(psnr(pred, ref), 100.0))
                pe = object_position_error(pred, ref)
                found += pe.matched
                total += pe.num_objects
                if pe.matched:
                    errs.append(pe.mean_px)
        out = {"recon_psnr_db": float(np.mean(psnrs)), "samples": float(len(samples))}
        out["object_found_frac"] = found / total if total else float("nan")
        out["object_pos_err_px"] = float(np.mean(errs)) if errs else float("nan")
        return out

    def write_files(self, directory: Path) -> None:
        """A loadable tokenizer directory next to the checkpoint weights (what the LM stages read)."""
        from model_runtime.tokenizers.fsq import FSQTokenizer

        if self.model is not None:
            FSQTokenizer(copy.deepcopy(self.model).cpu()).save(directory / VISION_DIR)
