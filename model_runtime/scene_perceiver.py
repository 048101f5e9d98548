"""The scene perceiver: what is on the table, where, and what the gripper holds, from one frame.

A small learned network shipped beside the guidance LM (``perception/`` in a model directory). It
reads the camera frame and gives the "perceive" answer's perception (``model_runtime.prompt``:
``see red cup left back , teal fork middle front holding nothing .``): the model's own view of
the scene, which the step is then planned from (``LocalModelBackend.next_step``: the step may
name only what was perceived, and a "perceive"-format LM gets the text as its answer's start).

Why a separate network and not the LM's own decoding: the LM reading object names from its
12 x 12 image tokens stayed far from usable after many attempts (object-list F1 0.03-0.57,
docs/training.md sessions 3-12), while per-pixel convolutions trained on the simulator's per-frame
ground truth are a dense, local signal (docs/training.md, "The scene perceiver", session 14).

Architecture (``ScenePerceiverNet``): a convolutional encoder (the frame plus two coordinate
channels, 96 px -> 12 x 12, the image-token grid), a small transformer over the 144 cells and a
summary token, the 2 x 2 finer (24 x 24) features under each cell added back for its name (scene context: "small"/"big" names depend on what else is there), then per cell
whether an object's centre lies in it and which name it has, and from the summary token whether
the gripper holds something and which. A name is read word by word from its end (``NameSlots``:
"teal fork" = kind "fork", then "teal"; "small red block" adds "small"), so every red object
teaches "red" and every fork "fork": 80 TableClear names learnt as 10 colours and 8 kinds (one
softmax over whole names learnt them far slower: docs/training.md, session 14). A cell's name is
the known name whose words are most likely together. Decoding: the cells whose object probability
reaches ``threshold``, each name once (its most confident cell), listed in the perception
format's reading order (``perception_in_reading_order``), each cell's centre as its pixel. With a
name reader (``name_crop`` > 0, ``NameReader``, session 17) each firing cell is also read from a
full-resolution crop around its centre, and its name is the most likely under both heads.

Files: ``perception/config.json`` (names, sizes, threshold) and ``perception/model.safetensors``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PERCEIVER_DIR", "NameReader", "NameSlots", "ScenePerceiver", "ScenePerceiverConfig", "ScenePerceiverNet", "cell_targets", "decode_perception", "name_cell_targets", "perceiver_loss", "reader_loss",
           "score_perception", "summarise_scores"]

PERCEIVER_DIR = "perception"
NONE = 0  # name class 0 in the targets: no object centred in this cell / holding nothing
HELD_CANDIDATES = 5  # names given with their probability of being the held object (frame verification weighs a pick by it)
OTHER_NAMES = 3  # per object, its cell's next likeliest names (a re-plan offers one when the first named nothing)


@dataclass
class ScenePerceiverConfig:
    names: list[str] = field(default_factory=list)  # class i + 1 -> object name (0: none / nothing)
    image_size: int = 96
    grid: int = 12  # output cells per side (the image-token grid: reading bands and cell borders fall on it)
    width: int = 96  # channels at the grid
    layers: int = 2  # transformer layers over the cells
    heads: int = 4
    threshold: float = 0.5  # an object is seen when its most likely cell's probability reaches it
    # The name reader (``NameReader``): a full-resolution crop of this many pixels around each
    # firing cell's centre names its object, with the cell head (their log-probabilities summed).
    # 0: the cell head alone names (perceivers trained before session 17).
    name_crop: int = 0

    def __post_init__(self) -> None:
        for name in ("image_size", "grid", "width", "layers", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.image_size != 8 * self.grid:
            raise ValueError(f"image_size {self.image_size} must be 8 times grid {self.grid} (three stride-2 stages)")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if isinstance(self.name_crop, bool) or not isinstance(self.name_crop, int) or self.name_crop < 0 \
                or (self.name_crop and (self.name_crop < 8 or self.name_crop % 4)):
            raise ValueError(f"name_crop must be 0 (off) or a multiple of 4 >= 8, got {self.name_crop!r}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a number in (0, 1), got {self.threshold!r}")
        if not isinstance(self.names, list) or not all(isinstance(n, str) and n.strip() for n in self.names):
            raise ValueError("names must be a list of non-empty object names")
        if len(set(self.names)) != len(self.names):
            raise ValueError("names must be unique")

    def to_dict(self) -> dict:
        return asdict(self)


class NameSlots:
    """Names as words read from their end: slot 0 the last word, slot 1 the one before, ... ("" where a
    name is shorter). ``words[k]``: slot k's vocabulary; ``ids``: (C, slots) each name's word per slot."""

    def __init__(self, names: list[str]) -> None:
        split = [n.split() for n in names]
        self.size = max(len(w) for w in split)
        self.words = [sorted({w[-1 - k] if k < len(w) else "" for w in split}) for k in range(self.size)]
        index = [{word: i for i, word in enumerate(ws)} for ws in self.words]
        self.ids = torch.tensor([[index[k][w[-1 - k] if k < len(w) else ""] for k in range(self.size)] for w in split])
        self.width = sum(len(ws) for ws in self.words)  # logits per prediction (all slots side by side)

    def name_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., width) slot logits -> (..., C) log-probability of each known name (its words' sum,
        renormalised over the known names)."""
        total, start = 0.0, 0
        for k, ws in enumerate(self.words):
            lp = torch.log_softmax(logits[..., start : start + len(ws)].float(), dim=-1)
            total = total + lp[..., self.ids[:, k]]
            start += len(ws)
        return torch.log_softmax(total, dim=-1)

    def loss(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every slot's word for name classes >= 1 (rows (N, width), classes (N,))."""
        if classes.numel() == 0:
            return logits.sum() * 0.0
        target = self.ids.to(classes.device)[classes - 1]  # (N, slots)
        total, start = 0.0, 0
        for k, ws in enumerate(self.words):
            total = total + torch.nn.functional.cross_entropy(logits[:, start : start + len(ws)], target[:, k])
            start += len(ws)
        return total / self.size


class NameReader(torch.nn.Module):
    """Names the object at a cell from a full-resolution crop around the cell's centre: (crops of the
    frame plus its two coordinate channels) -> ``NameSlots`` logits. Why: the cell head sees a cell
    through three stride-2 stages, and at 96 px a fork's tines, a knife's blade and a spoon's bowl
    differ by a few pixels (the cell head found 14 of 68 held-out forks: docs/training.md, session 17).
    The coordinates let position-defined names (a shirt's left half) be read from a crop too."""

    def __init__(self, crop: int, out: int) -> None:
        super().__init__()
        self.crop = crop
        gelu = torch.nn.GELU

        def conv(a: int, b: int, stride: int = 1) -> list[torch.nn.Module]:
            # group norm: without it the reader sat at chance for the first ~1000 steps (session 17)
            return [torch.nn.Conv2d(a, b, 3, stride=stride, padding=1), torch.nn.GroupNorm(8, b), gelu()]

        self.net = torch.nn.Sequential(*conv(5, 32), *conv(32, 32), *conv(32, 64, 2), *conv(64, 64), *conv(64, 96, 2),
                                       torch.nn.AdaptiveAvgPool2d(3), torch.nn.Flatten(),
                                       torch.nn.Linear(9 * 96, 128), gelu(), torch.nn.Linear(128, out))

    def crops(self, frames: torch.Tensor, index: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(N, 5, crop, crop) crops of ``frames`` (B, 5, S, S) at integer pixel ``centres`` (N, 2) as
        (x, y) of frame ``index`` (N,); outside the frame is zero."""
        half = self.crop // 2
        padded = F.pad(frames, (half, half, half, half))
        r = torch.arange(self.crop, device=frames.device)
        ys = centres[:, 1, None] + r  # rows in the padded frame: centre - half + half
        xs = centres[:, 0, None] + r
        return padded[index[:, None, None], :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)

    def forward(self, frames: torch.Tensor, index: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        return self.net(self.crops(frames, index, centres))


class ScenePerceiverNet(torch.nn.Module):
    """(B, 3, S, S) floats in [0, 1] -> (cell outputs (B, grid*grid, 1 + slot logits), holding outputs
    (B, 1 + slot logits)); output 0 is the object (held object) logit, the rest ``NameSlots`` logits."""

    def __init__(self, cfg: ScenePerceiverConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.slots = NameSlots(cfg.names)
        w, classes = cfg.width, 1 + self.slots.width
        gelu = torch.nn.GELU

        def conv(a: int, b: int, k: int = 3, stride: int = 1) -> torch.nn.Conv2d:
            return torch.nn.Conv2d(a, b, k, stride=stride, padding=k // 2)

        # RGB + x, y coordinates (positions are half the answer); three stride-2 stages: S -> S / 8 = grid
        self.fine = torch.nn.Sequential(conv(5, 32, 5, 2), gelu(), conv(32, 32), gelu(),
                                        conv(32, 64, 3, 2), gelu(), conv(64, 64), gelu())  # S / 4
        self.coarse = torch.nn.Sequential(conv(64, w, 3, 2), gelu(), conv(w, w), gelu())  # S / 8
        # the 2 x 2 fine features under each cell, for its name: a fork's tines are a few pixels
        self.detail = torch.nn.Linear(4 * 64, w)
        self.position = torch.nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, w))
        self.summary = torch.nn.Parameter(torch.zeros(1, 1, w))
        layer = torch.nn.TransformerEncoderLayer(w, cfg.heads, 2 * w, dropout=0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
        self.context = torch.nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.cells = torch.nn.Linear(w, classes)
        self.holding = torch.nn.Linear(w, classes)
        self.reader = NameReader(cfg.name_crop, self.slots.width) if cfg.name_crop else None
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, cfg.image_size), torch.linspace(-1, 1, cfg.image_size), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)

    def with_coords(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 5, S, S): the frame and its x, y coordinate channels (both networks' input)."""
        return torch.cat([images, self.coords.expand(images.shape[0], -1, -1, -1)], dim=1)

    def cell_centres(self, cells: torch.Tensor) -> torch.Tensor:
        """(N,) cell indices -> (N, 2) their centre pixels as (x, y) integers."""
        g, step = self.cfg.grid, self.cfg.image_size // self.cfg.grid
        return torch.stack([cells % g, cells // g], dim=1) * step + step // 2

    def read_names(self, images: torch.Tensor, index: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The name reader's slot logits (N, slot width) for cell ``cells`` (N,) of image ``index`` (N,)."""
        if self.reader is None:
            raise ValueError("this scene perceiver has no name reader (name_crop 0)")
        return self.reader(self.with_coords(images), index, self.cell_centres(cells))

    def reader_for(self, images: torch.Tensor, k: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``decode_perception``'s ``read_names`` for image ``k`` of ``images``; None without a reader."""
        if self.reader is None:
            return None
        return lambda cells: self.read_names(images, torch.full_like(cells, k), cells)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.with_coords(images)
        fine = self.fine(x)  # (B, 64, 2 grid, 2 grid)
        x = self.coarse(fine).flatten(2).transpose(1, 2)  # (B, grid*grid, w)
        x = torch.cat([self.summary.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        x = self.context(x)
        detail = F.pixel_unshuffle(fine, 2).flatten(2).transpose(1, 2)  # (B, grid*grid, 256)
        return self.cells(x[:, 1:] + self.detail(detail)), self.holding(x[:, 0])


def cell_targets(objects: list[tuple[str, tuple[float, float]]], holding: str | None, names: dict[str, int],
                 grid: int, width: float, height: float) -> tuple[np.ndarray, int, int]:
    """Training targets of one frame: (class per cell (grid*grid,), holding class, objects lost to a
    shared cell). ``objects``: (name, (u, v) pixel) pairs; ``names``: name -> class (>= 1)."""
    cells = np.zeros(grid * grid, dtype=np.int64)
    lost = 0
    for name, (u, v) in objects:
        row = min(max(int(grid * v / height), 0), grid - 1)
        col = min(max(int(grid * u / width), 0), grid - 1)
        if cells[row * grid + col] != NONE:
            lost += 1  # two centres in one cell: the first listed keeps it
            continue
        cells[row * grid + col] = names[name]
    return cells, (NONE if holding is None else names[holding]), lost


def name_cell_targets(objects: list[tuple[str, tuple[float, float]]], names: dict[str, int], grid: int,
                      width: float, height: float, radius: int) -> np.ndarray:
    """Name targets of one frame (training): (grid*grid,) the class of the object whose centre is
    nearest the cell's centre, for the cells within ``radius`` cells (Chebyshev) of some object's
    centre cell; 0 elsewhere. Why: at decoding a cell next to an object's centre that fires names
    an object, and without a target there its name is whatever the untrained name head says (a
    fork's neighbour read "spoon": a second, wrong object). ``radius`` 0: the centre cells only."""
    out = np.zeros(grid * grid, dtype=np.int64)
    if not objects:
        return out
    centres = np.array([p for _, p in objects], dtype=np.float64) * [grid / width, grid / height]  # in cells
    home = np.clip(np.floor(centres), 0, grid - 1)
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    mid = np.stack([cols + 0.5, rows + 0.5], axis=1)  # (cells, 2) as (x, y)
    dist = np.linalg.norm(mid[:, None, :] - centres[None], axis=2)  # (cells, objects)
    near = (np.abs(cols[:, None] - home[None, :, 0]) <= radius) & (np.abs(rows[:, None] - home[None, :, 1]) <= radius)
    dist[~near] = np.inf
    best = dist.argmin(axis=1)
    has = np.isfinite(dist[np.arange(len(dist)), best])
    classes = np.array([names[n] for n, _ in objects])
    out[has] = classes[best[has]]
    return out


def decode_perception(slots: NameSlots, cfg: ScenePerceiverConfig, cell_out: torch.Tensor,
                      holding_out: torch.Tensor, read_names: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """One frame's outputs -> ``{"objects": [{"name", "cell", "pixel", "p", "other_names"}], "holding",
    "holding_p", "held_candidates": [[name, p], ...]}`` in reading order (pixels on the ``image_size``
    frame; ``p`` the object probability of its cell; ``other_names`` the cell's next likeliest names
    with their probabilities; ``held_candidates`` the likeliest held names, each with
    P(held) * P(name | held)). ``read_names``: (n,) firing cells -> the name reader's slot logits
    (n, width); a cell's name is then the most likely under both heads (log-probabilities summed)."""
    from model_runtime.prompt import perception_in_reading_order

    g, size = cfg.grid, cfg.image_size
    p_obj = torch.sigmoid(cell_out[:, 0].float())
    best: dict[str, tuple[float, int]] = {}  # each name once: its most confident cell
    others: dict[int, list[list]] = {}  # cell -> its next likeliest names, [name, p]
    cells = torch.nonzero(p_obj >= cfg.threshold).flatten()
    if len(cells):
        log_probs = slots.name_log_probs(cell_out[cells, 1:])
        if read_names is not None:
            log_probs = log_probs + slots.name_log_probs(read_names(cells))
        probs = torch.softmax(log_probs.float(), dim=-1)
        top = torch.topk(probs, min(OTHER_NAMES + 1, len(cfg.names)), dim=-1)
        for cell, ps, ks in zip(cells.tolist(), top.values.tolist(), top.indices.tolist()):
            name = cfg.names[ks[0]]
            if name not in best or p_obj[cell] > best[name][0]:
                best[name] = (float(p_obj[cell]), cell)
                others[cell] = [[cfg.names[k], round(q, 4)] for q, k in zip(ps[1:], ks[1:])]
    seen = [{"name": n, "pixel": [(c % g + 0.5) * size / g, (c // g + 0.5) * size / g]} for n, (_, c) in best.items()]
    p_held = float(torch.sigmoid(holding_out[0].float()))
    p_name = slots.name_log_probs(holding_out[1:]).float().exp()
    held = cfg.names[int(p_name.argmax())] if p_held >= 0.5 else None
    out = perception_in_reading_order(seen, held, size, size)
    for o in out["objects"]:
        o["p"] = round(best[o["name"]][0], 3)
        o["other_names"] = others[best[o["name"]][1]]
    out["holding_p"] = round(p_held if held else 1.0 - p_held, 3)
    top = torch.topk(p_name, min(HELD_CANDIDATES, len(cfg.names)))
    out["held_candidates"] = [[cfg.names[int(k)], round(p_held * float(p), 4)] for p, k in zip(top.values, top.indices)]
    return out


class ScenePerceiver:
    """A trained scene perceiver loaded from its directory; ``perceive(image)`` -> perception dict."""

    def __init__(self, net: ScenePerceiverNet) -> None:
        self.net = net.eval()
        self.cfg = net.cfg

    @classmethod
    def load(cls, directory: str | Path) -> ScenePerceiver:
        from model_runtime.net_dir import load_net_dir

        return cls(load_net_dir(directory, ScenePerceiverConfig, ScenePerceiverNet, "scene perceiver"))

    def save(self, directory: str | Path) -> None:
        from model_runtime.net_dir import save_net_dir

        save_net_dir(directory, self.cfg, self.net)

    def perceive(self, image: np.ndarray) -> tuple[dict, float]:
        """(perception of one (H, W, 3) uint8 frame, milliseconds)."""
        from model_runtime.step_verifier import images_to_tensor

        t0 = time.perf_counter()
        x = images_to_tensor([image], self.cfg.image_size)
        with torch.inference_mode():
            cells, holding = self.net(x)
            out = decode_perception(self.net.slots, self.cfg, cells[0], holding[0], self.net.reader_for(x, 0))
        return out, 1e3 * (time.perf_counter() - t0)


def perceiver_loss(slots: NameSlots, cell_out: torch.Tensor, holding_out: torch.Tensor, cells: torch.Tensor,
                   holding: torch.Tensor, object_weight: float, name_cells: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """The training stage's loss: per cell, binary cross-entropy of "an object is centred here" (cells
    with one weigh ``object_weight``: a few among 144) and its name's words where ``name_cells``
    names one (default: the centre cells, ``cells``; ``name_cell_targets`` adds their neighbours);
    the same for the held object. ``cells``, ``name_cells`` (B, cells) and ``holding`` (B,): name
    classes, 0 = none."""
    flat, target = cell_out.flatten(0, 1), cells.flatten()
    is_obj = (target != NONE).float()
    obj_loss = F.binary_cross_entropy_with_logits(flat[:, 0], is_obj, pos_weight=torch.tensor(float(object_weight)))
    obj = target != NONE
    named_target = target if name_cells is None else name_cells.flatten()
    name_loss = slots.loss(flat[named_target != NONE, 1:], named_target[named_target != NONE])
    held = holding != NONE
    hold_loss = F.binary_cross_entropy_with_logits(holding_out[:, 0], held.float()) + slots.loss(holding_out[held, 1:], holding[held])
    with torch.no_grad():
        found = ((flat[:, 0] >= 0) == obj)[obj].float().mean() if obj.any() else torch.tensor(1.0)
        named = (slots.name_log_probs(flat[obj, 1:]).argmax(-1) + 1 == target[obj]).float().mean() if obj.any() else torch.tensor(1.0)
    return obj_loss + name_loss + hold_loss, {"found": float(found), "named": float(named)}


def reader_loss(net: ScenePerceiverNet, images: torch.Tensor, centres: torch.Tensor, name_cells: torch.Tensor,
                max_crops: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The name reader's loss: cross-entropy of the name's words from the crop at each named cell
    (``name_cells`` (B, cells), 0 = none: the centre cells and, with a name radius, their
    neighbours, which may fire at decoding too), at most ``max_crops`` of them: every object's
    centre cell (``centres``, nonzero there; the cell that fires at decoding), then neighbours
    drawn at random (8 of 9 named cells at radius 1: drawn evenly they slowed the reader down)."""
    index, cells = torch.nonzero(name_cells, as_tuple=True)
    if len(cells) > max_crops:
        centre = centres[index, cells] != 0
        rest = torch.nonzero(~centre).flatten()
        rest = rest[torch.randperm(len(rest), generator=gen).to(rest.device)]
        keep = torch.cat([torch.nonzero(centre).flatten(), rest])[:max_crops]
        index, cells = index[keep], cells[keep]
    classes = name_cells[index, cells]
    logits = net.read_names(images, index, cells)
    with torch.no_grad():
        read = (net.slots.name_log_probs(logits).argmax(-1) + 1 == classes).float().mean() if len(classes) else torch.tensor(1.0)
    return net.slots.loss(logits, classes), {"read": float(read)}


def score_perception(pred: dict | None, truth: dict) -> dict[str, int]:
    """Counts for one frame (evaluation): tp/fp/fn on full names, the same on colours (``c*``), matched
    objects with their cell right, the held object right, the whole perception exact. ``pred`` and
    ``truth``: ``{"objects": [{"name", "cell"}], "holding"}``; None scores as empty."""
    from collections import Counter

    gt = [(o["name"], o["cell"]) for o in truth["objects"]]
    pr = [(o["name"], o["cell"]) for o in (pred or {}).get("objects", [])]
    tp = sum((Counter(n for n, _ in gt) & Counter(n for n, _ in pr)).values())
    colour = [n.split()[-2] if len(n.split()) > 1 else n for n, _ in gt]
    colour_pr = [n.split()[-2] if len(n.split()) > 1 else n for n, _ in pr]
    ctp = sum((Counter(colour) & Counter(colour_pr)).values())
    exact_pairs = sum((Counter(gt) & Counter(pr)).values())  # same name and cell: paired first
    held_ok = pred is not None and pred.get("holding") == truth["holding"]
    return {"tp": tp, "fp": len(pr) - tp, "fn": len(gt) - tp, "ctp": ctp, "cfp": len(pr) - ctp, "cfn": len(gt) - ctp,
            "matched": tp, "cell_ok": exact_pairs,
            "holding_ok": int(held_ok), "exact": int(held_ok and Counter(gt) == Counter(pr))}


def summarise_scores(counts: list[dict[str, int]]) -> dict[str, float]:
    """Micro-averaged over frames: object precision / recall / F1, colour F1, cell accuracy among
    matched objects, held-object accuracy, exact share (issue 12's perception row)."""
    keys = ("tp", "fp", "fn", "ctp", "cfp", "cfn", "matched", "cell_ok", "holding_ok", "exact")
    c = {k: sum(x[k] for x in counts) for k in keys}
    n = len(counts)
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    cf1 = 2 * c["ctp"] / (2 * c["ctp"] + c["cfp"] + c["cfn"]) if c["ctp"] else 0.0
    if c["tp"] + c["fp"] + c["fn"] == 0:  # nothing to see (FoldCloth) and nothing said: perfect
        p = r = f1 = cf1 = 1.0
    return {"frames": n, "object_precision": p, "object_recall": r, "object_f1": f1, "colour_f1": cf1,
            "cell_acc": c["cell_ok"] / c["matched"] if c["matched"] else 0.0,
            "holding_acc": c["holding_ok"] / n if n else 0.0, "exact": c["exact"] / n if n else 0.0}
