"""Stage ``perception``: train the scene perceiver (``model_runtime.scene_perceiver``) on a recording.

Samples: frames of each episode with the recording's ground-truth perception of that frame
(``emu-guide record`` stores it per frame with the listed objects' pixels,
``meta/emu_perception.jsonl``): every step-boundary frame (where the guidance loop asks for the
next step and verifies the last one), the first and the last, and ``data.mid_samples_per_step``
frames drawn inside each step (the arm anywhere over the table). Targets: per cell of the
perceiver's grid the object whose centre lies in it (or none), and the held object (or nothing).

Loss (``model_runtime.scene_perceiver.perceiver_loss``): per cell, whether an object is centred in
it (cells with one weigh ``data.object_loss_weight`` + 1) and its name word by word, at the centre
cell and, with ``data.name_radius`` r, at the cells within r cells of it (the nearest centre's
name: a neighbour cell that fires then names the same object); the same for the held object.
Held-out evaluation (whole episodes held out), decoded as the runtime decodes: object-list F1
(full names), cell accuracy among matched objects, held-object accuracy, whole perception exact
(``model_runtime.scene_perceiver.summarise_scores``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from finetune_embodied.train.stages.base import Stage, split_heldout


class PerceptionSample(NamedTuple):
    image: np.ndarray  # (S, S, 3) uint8, resized to data.image_size
    objects: tuple[tuple[str, tuple[float, float]], ...]  # (name, (u, v) on the S x S frame), in reading order
    holding: str | None


def _frame_picks(subtasks: list[str], n_frames: int, mid: int, rng: np.random.Generator) -> list[int]:
    """Frame indices of one episode: step boundaries, first and last, ``mid`` random frames per step."""
    picks = {0, n_frames - 1}
    start = 0
    for t in range(1, n_frames + 1):
        if t == n_frames or subtasks[t] != subtasks[start]:
            picks.add(t - 1)  # the last frame of a step: the loop's post-step frame
            if mid and t - 1 > start:
                picks.update(int(i) for i in rng.integers(start, t - 1, size=mid))
            start = t
    return sorted(picks)


def perception_samples_from_dataset(cfg, rng: np.random.Generator) -> tuple[list[PerceptionSample], list[int], str]:
    """The perceiver's samples of a recording and their episode index; a line on what was read."""
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.record import PERCEPTION_FILE, load_perceptions
    from finetune_embodied.train.stages.tokenizer_stage import announce_resize, camera_key
    from model_runtime.prompt import ParseError, parse_perception
    from model_runtime.tokenizers import resize_image

    d = cfg.data
    targets = load_perceptions(d.path, pixels=True)
    if targets is None:
        raise ValueError(f"stage 'perception': {d.path} has no per-frame perception with object pixels"
                         f" ({PERCEPTION_FILE}, written by `emu-guide record`); the perceiver learns from that ground truth")
    reader = open_dataset(d.path, on_error=d.on_error, first_episodes=d.first_episodes)
    key = camera_key(reader.camera_keys, d.camera, d.path)
    announce_resize(reader, key, d.image_size)
    samples: list[PerceptionSample] = []
    groups: list[int] = []
    from tqdm import tqdm

    total = min(d.max_episodes or reader.num_episodes, reader.num_episodes)
    bar = tqdm(reader.iter_episodes(max_episodes=d.max_episodes), total=total,
               desc="[data] episodes -> perception samples", mininterval=10)
    for ep in bar:
        frames = targets.get(ep.episode_index)
        video = ep.images[key]
        if frames is None or len(frames) != len(video):
            raise ValueError(f"stage 'perception': {PERCEPTION_FILE} of {d.path} has"
                             f" {'no line' if frames is None else f'{len(frames)} frames'} for episode"
                             f" {ep.episode_index} ({len(video)} video frames)")
        h, w = video[0].shape[:2]
        subtasks = ep.subtasks if ep.subtasks is not None else [""] * len(video)
        for i in _frame_picks(list(subtasks), len(video), d.mid_samples_per_step, rng):
            text, pixels = frames[i]
            try:
                seen = parse_perception(text)
            except ParseError as exc:
                raise ValueError(f"stage 'perception': episode {ep.episode_index} frame {i}: {exc}") from None
            names = [o["name"] for o in seen["objects"]]
            if len(pixels) < len(names):
                raise ValueError(f"stage 'perception': episode {ep.episode_index} frame {i} lists {len(names)}"
                                 f" objects but {len(pixels)} pixels")
            sx, sy = d.image_size / w, d.image_size / h
            objects = tuple((n, (float(p[0]) * sx, float(p[1]) * sy)) for n, p in zip(names, pixels))
            image = np.array(resize_image(video[i], (d.image_size, d.image_size)))  # a copy, not a view
            samples.append(PerceptionSample(image, objects, seen["holding"]))
            groups.append(ep.episode_index)
    note = reader.report.summary() if reader.report.count else ""
    return samples, groups, note


def _perceiver_dir(path: str | Path) -> Path:
    """The scene perceiver directory of ``init_from``: a perception checkpoint's ``perception/`` or itself."""
    from model_runtime.scene_perceiver import PERCEIVER_DIR

    p = Path(path)
    p = p / PERCEIVER_DIR if (p / PERCEIVER_DIR).is_dir() else p
    if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
        raise ValueError(f"init_from {str(path)!r}: no scene perceiver (config.json and model.safetensors)")
    return p


def _perceiver_names(path: str | Path) -> list[str]:
    """The object names (classes, in order) of the perceiver at ``init_from``."""
    import json

    p = _perceiver_dir(path)
    try:
        names = json.loads((p / "config.json").read_text())["names"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"init_from {str(path)!r}: cannot read its perceiver's names ({exc})") from None
    return list(names)


class PerceptionStage(Stage):
    name = "perception"

    def __init__(self, cfg, info) -> None:
        super().__init__(cfg, info)
        if cfg.data.source != "dataset":
            raise ValueError("stage 'perception' trains on a recording (data.source: dataset)")
        self.config = self._config([])  # the model.* overrides are checked before minutes of reading
        if cfg.data.names_only and not (self.config.name_crop and cfg.init_from):
            raise ValueError("data.names_only trains the name reader alone: it needs model.name_crop > 0 and"
                             " init_from=<a trained perceiver> (the rest of the network, frozen)")
        rng = np.random.default_rng(cfg.seed)
        samples, groups, report = perception_samples_from_dataset(cfg, rng)
        if report:
            print(f"[data] {report}")
        if not samples:
            raise ValueError(f"stage 'perception': no frames in {cfg.data.path}")
        names = sorted({n for s in samples for n, _ in s.objects} | {s.holding for s in samples if s.holding})
        if not names:
            raise ValueError(f"stage 'perception': the perception of {cfg.data.path} never lists an object")
        if cfg.init_from:  # a trained perceiver keeps its classes (its names, in its order)
            known = _perceiver_names(cfg.init_from)
            new = sorted(set(names) - set(known))
            if new:
                raise ValueError(f"init_from {cfg.init_from!r}: the recording names objects its perceiver does not"
                                 f" know: {new[:5]}{' ...' if len(new) > 5 else ''}")
            names = known
        self.config = dataclasses.replace(self.config, names=names)
        from model_runtime.scene_perceiver import NameSlots

        self.slots = NameSlots(names)
        self.class_of = {n: i + 1 for i, n in enumerate(names)}
        self.train_set, self.eval_set = split_heldout(samples, groups, cfg.data.heldout_fraction)
        if not self.train_set:
            raise ValueError(f"stage 'perception': no training samples in {cfg.data.path} (all held out)")
        lost = sum(self._targets(s)[2] for s in samples)
        print(f"[data] {len(samples)} frames ({len(self.train_set)} train), {len(names)} object names;"
              f" {lost} of {sum(len(s.objects) for s in samples)} objects share a {self.config.grid}x{self.config.grid}"
              " cell with another (the first listed is the target)")
        self.model: torch.nn.Module | None = None

    def _config(self, names: list[str]):
        """The network's config: ``model.*`` overrides on the defaults; the data sets names and image size."""
        from model_runtime.scene_perceiver import ScenePerceiverConfig

        overrides = dict(self.cfg.model)
        for key in ("names", "image_size"):
            if key in overrides:
                raise ValueError(f"model.{key} is set by the data (data.image_size; the recording's object names)")
        try:
            return ScenePerceiverConfig(names=names, image_size=self.cfg.data.image_size, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model (ScenePerceiverConfig): {exc}") from None

    def _targets(self, s: PerceptionSample) -> tuple[np.ndarray, int, int]:
        from model_runtime.scene_perceiver import cell_targets

        size = self.config.image_size
        return cell_targets(list(s.objects), s.holding, self.class_of, self.config.grid, size, size)

    def build_model(self) -> torch.nn.Module:
        from model_runtime.scene_perceiver import ScenePerceiverNet

        self.model = ScenePerceiverNet(self.config)
        return self.model

    def load_init(self, model: torch.nn.Module, path: str | Path) -> None:
        """Start from a trained perceiver (a perception checkpoint or a ``perception/`` directory, whose
        names ``__init__`` took): every weight but a name reader the new config adds."""
        from safetensors.torch import load_file

        p = _perceiver_dir(path)
        missing, unexpected = model.load_state_dict(load_file(str(p / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith("reader.")]  # a new reader starts fresh
        if missing or unexpected:
            raise ValueError(f"init_from {str(path)!r} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.cfg.data.names_only:  # the reader learns on the frozen perceiver's cells
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith("reader."))
        return model

    def model_config(self) -> dict[str, Any]:
        return {"kind": "scene_perceiver", "perceiver": self.config.to_dict()}

    def collate(self, samples: list[PerceptionSample]) -> dict[str, Any]:
        """As the runtime's ``ScenePerceiver.perceive`` prepares a frame (images_to_tensor)."""
        from model_runtime.scene_perceiver import name_cell_targets
        from model_runtime.step_verifier import images_to_tensor

        targets = [self._targets(s) for s in samples]
        size, radius = self.config.image_size, self.cfg.data.name_radius
        names = [name_cell_targets(list(s.objects), self.class_of, self.config.grid, size, size, radius) for s in samples]
        return {"images": images_to_tensor([s.image for s in samples], self.config.image_size),
                "cells": torch.from_numpy(np.stack([t[0] for t in targets])),
                "name_cells": torch.from_numpy(np.stack(names)),
                "holding": torch.tensor([t[1] for t in targets])}

    def loss(self, model, batch, gen):
        from model_runtime.scene_perceiver import perceiver_loss, reader_loss

        d = self.cfg.data
        net = getattr(model, "module", model)  # DDP wraps it
        if d.names_only:
            return reader_loss(net, batch["images"], batch["cells"], batch["name_cells"], d.reader_crops, gen)
        cells, holding = model(batch["images"])
        loss, parts = perceiver_loss(self.slots, cells, holding, batch["cells"], batch["holding"],
                                     1.0 + d.object_loss_weight, batch["name_cells"] if d.name_radius else None)
        if net.reader is not None:
            extra, more = reader_loss(net, batch["images"], batch["cells"], batch["name_cells"], d.reader_crops, gen)
            loss, parts = loss + extra, {**parts, **more}
        return loss, parts

    def evaluate(self, model) -> dict[str, float]:
        from model_runtime.prompt import perception_in_reading_order
        from model_runtime.scene_perceiver import decode_perception, score_perception, summarise_scores

        samples = self.eval_samples()
        if not samples:
            return {}
        size = self.config.image_size
        counts = []
        bs = self.cfg.eval.batch_size
        for i in range(0, len(samples), bs):
            chunk = samples[i : i + bs]
            batch = self.collate(chunk)
            images = batch["images"].to(self.info.device)
            cells, holding = model(images)
            for k, s in enumerate(chunk):  # as the runtime decodes
                pred = decode_perception(self.slots, self.config, cells[k].cpu(), holding[k].cpu(), model.reader_for(images, k))
                truth = perception_in_reading_order([{"name": n, "pixel": list(p)} for n, p in s.objects], s.holding,
                                                    size, size)
                counts.append(score_perception(pred, truth))
        out = summarise_scores(counts)
        return {"object_f1": out["object_f1"], "object_precision": out["object_precision"],
                "object_recall": out["object_recall"], "cell_acc": out["cell_acc"], "holding_acc": out["holding_acc"],
                "exact": out["exact"], "samples": float(len(samples))}

    def write_files(self, directory: Path) -> None:
        """A loadable perceiver directory next to the checkpoint weights (what export copies)."""
        import copy

        from model_runtime.scene_perceiver import PERCEIVER_DIR, ScenePerceiver

        if self.model is not None:
            ScenePerceiver(copy.deepcopy(self.model).cpu()).save(directory / PERCEIVER_DIR)
