"""Image metrics for tokenizers and predicted subgoal images: PSNR and object-position error.

Object-position error says whether a reconstructed (or predicted) image puts the objects where the
reference image has them, which PSNR alone does not (a blurry cup in the right place scores low
PSNR but is what a planner needs). Method, on sim-style frames (flat coloured objects on a table):

1. Objects are found by colour: pixels with saturation >= ``min_saturation`` and value >=
   ``min_value`` (HSV, OpenCV scale) are grown into regions of one hue: a region keeps pixels
   within ``hue_tol`` of the hue of the pixel it started from (4-connected). Regions smaller than
   ``min_pixels`` are dropped. Hue is invariant to the renderer's brightness shading; grey, white,
   black and metal parts (the table, cutlery heads) are ignored by design.
2. Each reference region (largest first) is matched to the nearest unmatched prediction region of
   the same hue (optionally no farther than ``max_match_px``); a reference region with none is
   *missing*.
3. The error of a match is the distance between region centroids in pixels, and in metres when a
   ``CameraModel`` is given (both centroids cast onto the table plane ``z = plane_z`` with
   ``CameraModel.pixel_to_plane``).

A custom ``detector`` (any callable image -> {name: (u, v)}) replaces step 1-2: objects are then
matched by name.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emu_guide.types import CameraModel

__all__ = ["Blob", "PositionError", "find_colour_blobs", "object_position_error", "psnr"]

Detector = Callable[[np.ndarray], dict[str, tuple[float, float]]]


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype} and {b.dtype}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, max_value: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over whole uint8 arrays (inf when identical)."""
    a, b = _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(max_value**2 / mse)


@dataclass(frozen=True)
class Blob:
    """One same-hue region."""

    hue: float  # OpenCV hue, [0, 180)
    u: float  # centroid column (pixels)
    v: float  # centroid row (pixels)
    area: int  # pixels


def _hue_diff(h1: np.ndarray | float, h2: np.ndarray | float) -> np.ndarray | float:
    d = np.abs(np.asarray(h1, dtype=np.float64) - h2) % 180.0
    return np.minimum(d, 180.0 - d)


def find_colour_blobs(
    image: np.ndarray,
    min_saturation: int = 90,
    min_value: int = 50,
    hue_tol: float = 8.0,
    min_pixels: int = 4,
) -> list[Blob]:
    """Same-hue regions of saturated pixels in an (H, W, 3) uint8 RGB image, largest first."""
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hue = hsv[..., 0].astype(np.float64)
    mask = (hsv[..., 1] >= min_saturation) & (hsv[..., 2] >= min_value)
    h, w = mask.shape
    seen = np.zeros_like(mask)
    blobs = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seed = hue[r0, c0]
        seen[r0, c0] = True
        queue, pix = deque([(r0, c0)]), []
        while queue:  # grow the region: 4-neighbours within hue_tol of the seed's hue
            r, c = queue.popleft()
            pix.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                inside = 0 <= rr < h and 0 <= cc < w
                if inside and mask[rr, cc] and not seen[rr, cc] and _hue_diff(hue[rr, cc], seed) <= hue_tol:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        if len(pix) >= min_pixels:
            rows, cols = np.asarray(pix).T
            ang = hue[rows, cols] * (np.pi / 90.0)  # circular mean of hue
            mean_hue = (np.degrees(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())) / 2.0) % 180.0
            blobs.append(Blob(hue=float(mean_hue), u=float(cols.mean()), v=float(rows.mean()), area=len(pix)))
    return sorted(blobs, key=lambda b: -b.area)


@dataclass
class PositionError:
    """Object-position error between a prediction and a reference image."""

    mean_px: float  # mean centroid distance over matched objects (nan if none matched)
    mean_m: float | None  # same in metres on the table plane (None without a camera)
    matched: int  # objects found in both
    missing: list[str] = field(default_factory=list)  # reference objects not found in the prediction
    per_object_px: dict[str, float] = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        return self.matched + len(self.missing)


def object_position_error(
    pred: np.ndarray,
    target: np.ndarray,
    camera: CameraModel | None = None,
    plane_z: float = 0.0,
    detector: Detector | None = None,
    hue_tol: float = 8.0,
    min_pixels: int = 4,
    max_match_px: float | None = None,
) -> PositionError:
    """Where objects are in ``pred`` vs in ``target`` (both (H, W, 3) uint8); see the module doc.

    ``max_match_px``: a same-hue prediction region farther than this from a reference object does
    not match it (the object counts as missing); None = no limit.
    """
    pred, target = _check_pair(pred, target)
    if camera is not None and (camera.width, camera.height) != (target.shape[1], target.shape[0]):
        raise ValueError(f"camera is {camera.width}x{camera.height} but images are {target.shape[1]}x{target.shape[0]}")
    pairs: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    missing: list[str] = []
    if detector is not None:
        ref, got = detector(target), detector(pred)
        for name, uv in ref.items():
            far = name in got and max_match_px is not None and np.hypot(*np.subtract(uv, got[name])) > max_match_px
            if name in got and not far:
                pairs[name] = (tuple(uv), tuple(got[name]))
            else:
                missing.append(name)
    else:
        ref_blobs = find_colour_blobs(target, hue_tol=hue_tol, min_pixels=min_pixels)
        cand = find_colour_blobs(pred, hue_tol=hue_tol, min_pixels=min_pixels)
        used: set[int] = set()
        for i, rb in enumerate(ref_blobs):
            name = f"hue{rb.hue:.0f}@({rb.u:.0f},{rb.v:.0f})#{i}"
            options = [
                (np.hypot(pb.u - rb.u, pb.v - rb.v), j)
                for j, pb in enumerate(cand)
                if j not in used and _hue_diff(pb.hue, rb.hue) <= hue_tol
            ]
            if max_match_px is not None:
                options = [o for o in options if o[0] <= max_match_px]
            if not options:
                missing.append(name)
                continue
            _, j = min(options)
            used.add(j)
            pairs[name] = ((rb.u, rb.v), (cand[j].u, cand[j].v))

    per_px = {n: float(np.hypot(a[0] - b[0], a[1] - b[1])) for n, (a, b) in pairs.items()}
    mean_px = float(np.mean(list(per_px.values()))) if per_px else float("nan")
    mean_m = None
    if camera is not None:
        dists = [
            float(
                np.linalg.norm(camera.pixel_to_plane(*a, plane_z=plane_z) - camera.pixel_to_plane(*b, plane_z=plane_z))
            )
            for a, b in pairs.values()
        ]
        mean_m = float(np.mean(dists)) if dists else float("nan")
    return PositionError(mean_px=mean_px, mean_m=mean_m, matched=len(pairs), missing=missing, per_object_px=per_px)
