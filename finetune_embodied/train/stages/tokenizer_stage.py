"""Stage ``tokenizer``: train the default vision tokenizer (``model_runtime.tokenizers.fsq``) on camera frames.

Loss: ``model_runtime.tokenizers.fsq.fsq_loss`` (L1 + MSE + edge term) on the reconstruction through the
quantiser. FSQ's quantiser has no parameters, so there is no codebook or commitment loss to add:
the quantisation is trained through the straight-through rounding inside the reconstruction loss;
codebook usage is logged instead (``code_usage``: fraction of the codes used in the batch).
Held-out evaluation: reconstruction PSNR and object-position error (``model_runtime.image_metrics``).

Optional ``semantic_aux`` (training only, off by default): a small head on the quantised latent
names the object centred in each token (``SemanticHead``); its cross-entropy, weighted, joins the
loss, and its held-out accuracy on object tokens is logged at eval (``semantic_object_acc``). The
head is never saved into the tokenizer directory (docs/tokenizers.md, "Semantic auxiliary loss").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from finetune_embodied.train.checkpoint import CheckpointError, load_weights
from finetune_embodied.train.stages.base import Stage, split_heldout

VISION_DIR = "vision_tokenizer"  # inside a tokenizer-stage checkpoint: a loadable tokenizer directory
HEAD_KEY = "semantic_head."  # training-only weights (semantic_aux): in checkpoints, never in the tokenizer


class FrameSample(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8, resized to data.image_size
    cells: np.ndarray | None  # (grid_h * grid_w,) int64 semantic_aux targets (0 = none), or None when off


class SemanticHead(torch.nn.Module):
    """Training-only head of ``semantic_aux``: per token, the object centred in it (none or one of
    ``num_classes``) from that token's quantised FSQ levels alone. Two hidden layers: the input is
    d = 4 numbers, which a linear layer cannot split into ~80 classes. 1x1 convolutions = one MLP
    applied at every grid position."""

    def __init__(self, dim: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(dim, hidden, 1), torch.nn.SiLU(),
            torch.nn.Conv2d(hidden, hidden, 1), torch.nn.SiLU(),
            torch.nn.Conv2d(hidden, num_classes + 1, 1),
        )

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        """levels (B, d, h, w) -> logits (B, num_classes + 1, h, w)."""
        return self.net(levels)


def semantic_loss(logits: torch.Tensor, cells: torch.Tensor, object_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted CE of the head's logits (B, C + 1, h, w) against targets (B, h * w); tokens with an
    object weigh ``object_weight``. Also the accuracy on object tokens (nan when the batch has none)."""
    flat = logits.flatten(2).transpose(1, 2).reshape(-1, logits.shape[1])  # (B * h * w, C + 1), row-major tokens
    target = cells.reshape(-1)
    w = torch.where(target > 0, float(object_weight), 1.0)
    ce = (F.cross_entropy(flat.float(), target, reduction="none") * w).sum() / w.sum()
    with torch.no_grad():
        hit = target > 0
        acc = float((flat[hit].argmax(-1) == target[hit]).float().mean()) if hit.any() else float("nan")
    return ce, {"sem_ce": float(ce.detach()), "sem_object_acc": acc}


def load_tokenizer_or_checkpoint(path: str | Path, device: str = "cpu"):
    """A vision tokenizer from its directory, or from a tokenizer-stage checkpoint holding one."""
    from model_runtime.tokenizers import load_vision_tokenizer as _load

    p = Path(path)
    if (p / VISION_DIR).is_dir():
        p = p / VISION_DIR
    return _load(p, device=device)


def frames_from_dataset(cfg, rng: np.random.Generator, targets: dict | None = None,
                        grid: tuple[int, int] = (0, 0)) -> tuple[list[FrameSample], list[int], str]:
    """Frames (resized) and their episode index from a LeRobot dataset (v3.x or v2.x); the skip report text.

    ``targets`` (``semantic_targets``): each frame also gets its per-token object classes on a
    ``grid`` (``FrameSample.cells``), else ``cells`` is None."""
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.sequences import frame_cell_targets
    from model_runtime.tokenizers import resize_image

    d = cfg.data
    reader = open_dataset(d.path, on_error=d.on_error, first_episodes=d.first_episodes)
    key = camera_key(reader.camera_keys, d.camera, d.path)
    announce_resize(reader, key, d.image_size)
    frames: list[FrameSample] = []
    groups: list[int] = []
    for ep in reader.iter_episodes(max_episodes=d.max_episodes):
        video = ep.images[key]
        idx = np.arange(len(video))
        if d.frames_per_episode and len(idx) > d.frames_per_episode:
            idx = np.sort(rng.choice(idx, size=d.frames_per_episode, replace=False))
        per_frame = None
        if targets is not None:
            per_frame = targets["frames"].get(ep.episode_index)
            if per_frame is None or len(per_frame) != len(video):
                got = "none" if per_frame is None else f"{len(per_frame)} perception lines"
                raise ValueError(f"semantic_aux: dataset {d.path} episode {ep.episode_index} has {len(video)} frames "
                                 f"but {got} in its perception file (record it again with emu-guide record)")
        for i in idx:
            cells = None
            if per_frame is not None:
                text, pixels = per_frame[i]
                cells = frame_cell_targets(text, pixels, targets["classes"], grid, video.shape[1:3])
            frames.append(FrameSample(resize_image(video[i], (d.image_size, d.image_size)), cells))
            groups.append(ep.episode_index)
    return frames, groups, reader.report.summary() if reader.report.count else ""


def semantic_targets(path: str | Path) -> dict:
    """``{"frames": episode_index -> [(perception text, object pixels)] per frame, "classes": sorted
    object names}`` from a recording's perception file (``semantic_aux``); an error when it lacks pixels."""
    from finetune_embodied.record import PERCEPTION_FILE, load_perceptions
    from finetune_embodied.sequences import perception_object_classes

    frames = load_perceptions(path, pixels=True)
    if frames is None:
        raise ValueError(f"semantic_aux needs object pixels in {path}/{PERCEPTION_FILE}"
                         " (recorded by this version of emu-guide record)")
    classes = perception_object_classes(sorted({t for per in frames.values() for t, _ in per}))
    if not classes:
        raise ValueError(f"semantic_aux: the perceptions in {path}/{PERCEPTION_FILE} list no objects")
    return {"frames": frames, "classes": classes}


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
        self.classes: list[str] = []  # semantic_aux: class k + 1 of the head is classes[k]
        if d.source == "synthetic":
            from finetune_embodied.train.synthetic import synthetic_frames

            frames = [FrameSample(f, None) for f in synthetic_frames(d.num_synthetic, d.image_size, cfg.seed)]
            groups = list(range(len(frames)))
        else:
            targets, grid = None, (0, 0)
            if cfg.semantic_aux.weight:
                targets = semantic_targets(d.path)
                self.classes = targets["classes"]
                fc = self.fsq_config()
                grid = (fc.grid, fc.grid)
            frames, groups, self.data_report = frames_from_dataset(cfg, rng, targets, grid)
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
        if self.cfg.semantic_aux.weight:
            if self.info.world_size > 1:
                raise ValueError("semantic_aux runs in one process only (its head sits outside the DDP forward)")
            g = torch.get_rng_state()
            torch.manual_seed(self.cfg.seed + 7)  # the head's init does not shift the tokenizer's random stream
            self.model.semantic_head = SemanticHead(len(self.fsq_config().levels), len(self.classes),
                                                    self.cfg.semantic_aux.hidden)
            torch.set_rng_state(g)
        return self.model

    def model_config(self) -> dict[str, Any]:
        return {"kind": "fsq", "fsq": self.fsq_config().to_dict()}

    def load_init(self, model: torch.nn.Module, path: str | Path) -> None:
        p = Path(path)
        p = p / VISION_DIR if (p / VISION_DIR).is_dir() else p
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(f"init_from {str(path)!r}: no tokenizer weights (model.safetensors)")
        weights = {k: v for k, v in load_weights(p / "model.safetensors").items() if not k.startswith(HEAD_KEY)}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith(HEAD_KEY)]  # a new head starts fresh
        if missing or unexpected:
            raise CheckpointError(f"init_from {str(path)!r} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def collate(self, samples: list[FrameSample]) -> dict[str, Any]:
        x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        batch = {"images": x}
        if samples and samples[0].cells is not None:
            batch["cells"] = torch.from_numpy(np.stack([s.cells for s in samples]))  # (B, h * w)
        return batch

    def loss(self, model, batch, gen):
        from model_runtime.tokenizers.fsq import fsq_loss

        aux = self.cfg.semantic_aux
        if aux.weight:
            m = getattr(model, "module", model)
            levels, codes = m.encode(batch["images"])  # (B, d, h, w) straight-through levels, (B, h, w)
            recon = m.decode_levels(levels)
        else:
            recon, codes = model(batch["images"])
        loss, parts = fsq_loss(recon.float(), batch["images"], object_weight=self.cfg.data.object_loss_weight)
        parts.pop("loss", None)
        if aux.weight:
            ce, sem = semantic_loss(m.semantic_head(levels), batch["cells"], aux.object_weight)
            loss = loss + aux.weight * ce
            parts.update(sem)
        n_codes = self.fsq_config().num_codes
        parts["code_usage"] = float(torch.unique(codes).numel()) / min(n_codes, codes.numel())
        return loss, parts

    def evaluate(self, model) -> dict[str, float]:
        from model_runtime.image_metrics import object_position_error, psnr

        samples = self.eval_samples()
        if not samples:
            return {}
        psnrs, errs, found, total = [], [], 0, 0
        sem_hits, sem_objects = 0, 0
        head = getattr(getattr(model, "module", model), "semantic_head", None)
        bs = self.cfg.eval.batch_size
        for i in range(0, len(samples), bs):
            batch = self.collate(samples[i : i + bs])
            x = batch["images"].to(self.info.device)
            if head is not None:  # the head on held-out frames: does the code carry identity beyond the training scenes?
                m = getattr(model, "module", model)
                levels, _ = m.encode(x)
                recon = m.decode_levels(levels)
                pred = head(levels).flatten(2).argmax(1).cpu()  # (B, h * w)
                hit = batch["cells"] > 0
                sem_hits += int((pred[hit] == batch["cells"][hit]).sum())
                sem_objects += int(hit.sum())
            else:
                recon, _ = model(x)
            imgs = ((recon.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for pred_img, ref in zip(imgs, (s.image for s in samples[i : i + bs])):
                psnrs.append(min(psnr(pred_img, ref), 100.0))
                pe = object_position_error(pred_img, ref)
                found += pe.matched
                total += pe.num_objects
                if pe.matched:
                    errs.append(pe.mean_px)
        out = {"recon_psnr_db": float(np.mean(psnrs)), "samples": float(len(samples))}
        out["object_found_frac"] = found / total if total else float("nan")
        out["object_pos_err_px"] = float(np.mean(errs)) if errs else float("nan")
        if head is not None:
            out["semantic_object_acc"] = sem_hits / sem_objects if sem_objects else float("nan")
        return out

    def write_files(self, directory: Path) -> None:
        """A loadable tokenizer directory next to the checkpoint weights (what the LM stages read)."""
        from model_runtime.tokenizers.fsq import FSQTokenizer

        if self.model is not None:
            model = copy.deepcopy(self.model).cpu()
            if hasattr(model, "semantic_head"):  # training-only: the tokenizer directory stays what model_runtime loads
                del model.semantic_head
            FSQTokenizer(model).save(directory / VISION_DIR)
