"""Grounding: where is the named object now, where should it end up, and in which frame.

- ``Detector`` is the interface a robot's own detector implements: ``detect(image, names)``
  returns where each named thing is visible (pixel centre, box, mask area, a score).
- ``ColorShapeDetector`` is the simulator's: OpenCV colour segmentation against a per-name
  appearance (reference colour and a size prior), connected components, and a score from
  colour distance and size.
- ``Grounder.ground`` turns a parsed step into a grounded ``ActionGoal``: it resolves "the second
  cup" / "the one on the left" among the detected candidates, finds the object in the current
  frame and where it is in the predicted subgoal image, cross-checks the sentence against the
  subgoal (did the named object move the way the verb says?), and maps pixels to the ``table``
  frame with the camera model (``CameraModel.pixel_to_plane``). The goal gets ``target_pose``,
  ``frame_id``, ``stamp`` and a ``confidence``; an object not found gives ``UNGROUNDED``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from emu_guide.types import ActionGoal, CameraModel, Frame, GoalStatus
from planner.parse import COLOURS, SIDE_WORDS, ParsedStep

__all__ = [
    "Appearance",
    "ColorShapeDetector",
    "Detection",
    "Detector",
    "Grounder",
    "GroundingInfo",
    "NAMED_COLOURS",
]

# Reference RGB of the colour words the parser knows (a fallback when the scene gives none).
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "green": (50, 160, 70), "blue": (40, 80, 200), "yellow": (230, 200, 40),
    "orange": (235, 130, 30), "purple": (130, 60, 170), "pink": (235, 130, 170), "white": (235, 235, 230),
    "black": (30, 30, 30), "grey": (128, 128, 128), "brown": (120, 80, 40), "cyan": (40, 190, 200),
    "magenta": (200, 40, 170), "teal": (30, 130, 130), "beige": (225, 210, 170), "violet": (140, 90, 200),
}  # fmt: skip
assert set(NAMED_COLOURS) == set(COLOURS)


@dataclass
class Detection:
    """One named thing seen in an image."""

    name: str
    center: tuple[float, float]  # (u, v) pixels: the mask centroid
    bbox: tuple[int, int, int, int]  # (u0, v0, u1, v1) inclusive-exclusive
    area: int  # pixels in the mask
    score: float  # 0..1
    base: tuple[float, float] | None = None  # (u, v) of the footprint centre on the table, when known

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class Detector(Protocol):
    """Finds named objects in an RGB image (a robot's own detector can implement this)."""

    def detect(self, image: np.ndarray, names: Sequence[str]) -> list[Detection]:
        """Every visible instance of each name (possibly none), best first per name."""
        ...

    def locate(self, image: np.ndarray, name: str) -> Detection | None:
        """The best detection of ``name`` or None."""
        ...


@dataclass
class Appearance:
    """How a named thing looks: a reference colour, an expected visible area, a height."""

    rgb: tuple[float, float, float]  # reference colour under neutral light
    area_m2: float = 0.0  # expected visible coloured area, in m^2 seen from the camera (0 = unknown)
    elongation: float = 0.0  # expected long/short axis ratio of the visible blob (0 = unknown)
    height_m: float = 0.0  # height of the visible centre above the table (pixel -> world plane)
    fixed: bool = False  # a receptacle/zone: large, never moves, not separated from the background
    kind: str = ""
    grasp_offset_m: float = 0.0  # the grasp point lies this far from the coloured part, toward its metal end


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """Brightness-normalised colour: (r, g, b) / (r + g + b) * 3, robust to shading."""
    s = rgb.sum(axis=-1, keepdims=True) + 1e-6
    return rgb / s * 3.0


def _similar(a: tuple[float, float, float], b: tuple[float, float, float], tol: float) -> bool:
    ca, cb = _chroma(np.asarray(a, np.float32)), _chroma(np.asarray(b, np.float32))
    ratio = (sum(a) + 1.0) / (sum(b) + 1.0)
    return bool(np.abs(ca - cb).max() < tol and 0.6 < ratio < 1.6)


class ColorShapeDetector:
    """OpenCV colour segmentation for the simulator, behind the ``Detector`` interface.

    1. Foreground: pixels that differ from a median-blurred copy of the image (the table and its
       lighting vary slowly, objects are small), so white/black items are found on any table.
    2. Colour: brightness-normalised colour within ``tolerance`` of the name's reference and
       brightness within ``brightness`` times it (light and shading change brightness much more
       than chromaticity).
    3. Connected components above a minimum size; when several names share a colour, components
       are assigned by expected size and the score says how sure that is.
    Fixed receptacles skip step 1 (they are as large as the blur) and must match the size prior.
    """

    def __init__(
        self,
        appearances: dict[str, Appearance],
        camera: CameraModel | None = None,
        workspace: tuple[float, float, float, float] | None = None,
        tolerance: float = 0.16,
        brightness: tuple[float, float] = (0.3, 1.35),
        min_area_px: float = 3.0,
    ) -> None:
        if not appearances:
            raise ValueError("ColorShapeDetector needs at least one appearance")
        self.appearances = {k.lower(): v for k, v in appearances.items()}
        self.camera = camera  # converts pixel areas to m^2 for the size prior (None: no size prior)
        # (x_min, x_max, y_min, y_max) in the table frame: where things can be; pixels seeing the floor
        # beyond it are ignored (needs the camera)
        self.workspace = workspace
        self._ws_cache: dict[tuple[int, int], np.ndarray] = {}
        self.tolerance = tolerance
        self.brightness = brightness
        self.min_area_px = min_area_px

    @classmethod
    def from_names(cls, names: Sequence[str]) -> ColorShapeDetector:
        """Appearances from the colour word in each name ("red cup" -> red); names without one are skipped."""
        apps = {}
        for n in names:
            for w in n.lower().split():
                if w in NAMED_COLOURS:
                    apps[n.lower()] = Appearance(NAMED_COLOURS[w])
        if not apps:
            raise ValueError(f"ColorShapeDetector.from_names: no colour word in any of {list(names)}")
        return cls(apps)

    @classmethod
    def for_env(cls, env: Any) -> ColorShapeDetector:
        """Appearances from the simulator's object models: colour, size, kind (never positions).
        ValueError when the environment has no object models this detector can use."""
        from emu_guide.env_protocol import guidance_env

        sim = guidance_env(env)
        if hasattr(sim, "appearances"):
            return cls(sim.appearances(), camera=sim.camera)
        if not hasattr(sim, "privileged_state") or getattr(sim, "camera", None) is None:
            raise ValueError(f"{type(sim).__name__} offers no object models (appearances() or privileged_state() and camera)")
        state = sim.privileged_state()
        cam = sim.camera
        eye = cam.world_from_camera[:3, 3]
        sin_e = abs(eye[2]) / float(np.linalg.norm(eye))  # elevation of the view: horizontal faces shrink by it
        cos_e = math.sqrt(max(0.0, 1 - sin_e**2))  # vertical faces shrink by this
        apps: dict[str, Appearance] = {}
        for name, o in state.get("objects", {}).items():
            if "rgb" not in o:  # e.g. cloth parts: regions of one garment, not separable by colour
                continue
            kind, r, h = o.get("kind", ""), float(o.get("radius", 0.03)), float(o.get("height", 0.0))
            area, elong = _visible_blob(kind, r, h, sin_e, cos_e)
            # cutlery: the coloured handle's centre is 3 cm from the utensil's centre (the grasp point)
            offset = 0.03 if kind in ("fork", "spoon", "knife") else 0.0
            apps[name] = Appearance(tuple(o["rgb"]), area_m2=area, elongation=elong, height_m=h / 2, kind=kind,
                                    grasp_offset_m=offset)
        for rec in getattr(sim, "receptacles", []):
            lx, ly = rec.size
            apps[rec.name] = Appearance(tuple(rec.rgb), area_m2=lx * ly * sin_e, height_m=float(rec.floor),
                                        fixed=True, kind=getattr(rec, "kind", ""))
        workspace = None
        if hasattr(sim, "WORKSPACE_LOW") and hasattr(sim, "WORKSPACE_HIGH"):  # the arm's reach, table frame
            lo, hi = sim.WORKSPACE_LOW, sim.WORKSPACE_HIGH
            workspace = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
        if not any(not a.fixed for a in apps.values()):
            raise ValueError(
                f"ColorShapeDetector: the {getattr(sim, 'task_name', 'environment')} objects have no colour "
                f"model ({', '.join(sim.object_names())}); this detector cannot ground them"
            )
        return cls(apps, camera=cam, workspace=workspace)

    # -- segmentation -------------------------------------------------------------------------
    def foreground(self, image: np.ndarray) -> np.ndarray:
        """(H, W) bool: pixels that stand out from the slowly varying table around them."""
        import cv2

        k = max(5, (min(image.shape[:2]) // 4) | 1)
        bg = cv2.medianBlur(image, k)
        return np.abs(image.astype(np.int16) - bg.astype(np.int16)).max(axis=2) > 18

    def colour_mask(self, image: np.ndarray, rgb: tuple[float, float, float], min_brightness: float | None = None,
                    ) -> np.ndarray:
        img = image.astype(np.float32)
        ref = np.asarray(rgb, dtype=np.float32)
        dist = np.abs(_chroma(img) - _chroma(ref)).max(axis=-1)
        bright = img.sum(axis=-1) / max(1.0, float(ref.sum()))
        tol = self.tolerance
        if float(np.ptp(ref)) < 0.12 * float(ref.mean() + 1):  # achromatic (white/black/grey): chroma says little
            tol = 0.08
        lo = self.brightness[0] if min_brightness is None else min_brightness
        return (dist < tol) & (bright > lo) & (bright < self.brightness[1])

    def workspace_mask(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """(H, W) bool: pixels whose ray meets the table plane inside the workspace (None: no limit)."""
        if self.workspace is None or self.camera is None:
            return None
        key = (int(shape[0]), int(shape[1]))
        if key not in self._ws_cache:
            cam = self.camera
            v, u = np.mgrid[0 : key[0], 0 : key[1]].astype(np.float64)
            u = (u + 0.5) * cam.width / key[1] - 0.5
            v = (v + 0.5) * cam.height / key[0] - 0.5
            rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], axis=-1)
            rays = rays @ cam.world_from_camera[:3, :3].T  # (H, W, 3) in the table frame
            origin = cam.world_from_camera[:3, 3]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = -origin[2] / rays[..., 2]
            x, y = origin[0] + t * rays[..., 0], origin[1] + t * rays[..., 1]
            x0, x1, y0, y1 = self.workspace
            self._ws_cache[key] = (t > 0) & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        return self._ws_cache[key]

    def mask(self, image: np.ndarray, name: str) -> np.ndarray:
        """(H, W) bool: the pixels that look like ``name`` (colour match, and foreground for movable things)."""
        app = self.appearances.get(name.lower())
        if app is None:
            raise KeyError(f"ColorShapeDetector: no appearance for {name!r}; known: {sorted(self.appearances)}")
        m = self.colour_mask(image, app.rgb)
        return m if app.fixed else m & self.foreground(image)

    def _metres_per_px(self, image: np.ndarray, u: float, v: float) -> float | None:
        """Size of one pixel of ``image`` on the table plane around (u, v), or None without a camera."""
        cam = self.camera
        if cam is None:
            return None
        sx, sy = cam.width / image.shape[1], cam.height / image.shape[0]
        try:
            a = cam.pixel_to_plane(u * sx, v * sy)
            b = cam.pixel_to_plane((u + 1) * sx, v * sy)
        except ValueError:
            return None
        return float(np.linalg.norm(a - b))

    def detect(self, image: np.ndarray, names: Sequence[str]) -> list[Detection]:
        import cv2

        wanted = [n.lower() for n in names if n and n.lower() in self.appearances]
        if not wanted:
            return []
        fg = None
        out: list[Detection] = []
        done: set[str] = set()
        for name in wanted:
            if name in done:
                continue
            app = self.appearances[name]
            # Every known name that looks like this one competes for the same components.
            group = [n for n, a in self.appearances.items() if a.fixed == app.fixed and _similar(a.rgb, app.rgb, 0.1)]
            if app.fixed:
                # receptacles: deep shaded interiors (a bin's is under half its rim's brightness); close
                # the wire gaps of a rack so one receptacle is one component; never the floor beyond reach
                mask = self.colour_mask(image, app.rgb, min_brightness=0.2)
                ws = self.workspace_mask(image.shape)
                if ws is not None:
                    mask &= ws
                mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0
            else:
                fg = self.foreground(image) if fg is None else fg
                mask = self.colour_mask(image, app.rgb) & fg
            n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            comps = []
            for i in range(1, n):
                area = float(stats[i, cv2.CC_STAT_AREA])
                if area < self.min_area_px * (image.shape[1] / 96.0) ** 2:
                    continue
                if app.fixed:
                    comp = labels == i
                    # the receptacle whose colour this blob is nearest to must be one of this group
                    # (a rack's shaded wires can pass a bin's colour test, a bin's rim a rack's)
                    if self._nearest_fixed(image[comp].mean(axis=0)) not in group:
                        continue
                    pts = np.column_stack(np.nonzero(comp)[::-1]).astype(np.int32)
                    area = max(area, float(cv2.contourArea(cv2.convexHull(pts))))  # the outline counts
                x, y, w, h = (int(stats[i, j]) for j in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                         cv2.CC_STAT_HEIGHT))
                cu, cv = float(centroids[i, 0]), float(centroids[i, 1])
                m = cv2.moments((labels[y : y + h, x : x + w] == i).astype(np.uint8), binaryImage=True)
                cov = np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]]) / max(1.0, m["m00"])
                ev, evec = np.linalg.eigh(cov + np.eye(2) * 1 / 12)  # + pixel extent so 1-px-wide lines are finite
                elong = float(math.sqrt(ev[1] / ev[0]))
                axis = (float(evec[0, 1]), float(evec[1, 1]), float(math.sqrt(3 * ev[1])))  # (du, dv, half length)
                mpp = self._metres_per_px(image, cu, cv)
                comps.append({"centre": (cu, cv), "bbox": (x, y, x + w, y + h), "area": area, "elong": elong, "axis": axis,
                              "area_m2": None if mpp is None else area * mpp * mpp})
            for gname in group:
                done.add(gname)
            for d, c in self._assign(comps, group):
                if d.name in wanted:
                    d.base = self._grasp_pixel(image, c, self.appearances[d.name])
                    out.append(d)
        out.sort(key=lambda d: (wanted.index(d.name), -d.score))
        return out

    def _grasp_pixel(self, image: np.ndarray, comp: dict, app: Appearance) -> tuple[float, float] | None:
        """Pixel of the grasp point when it is off the coloured part (cutlery: toward the metal head).

        The end of the blob's long axis with more bright, grey (metal) foreground pixels beyond it
        is the head; the grasp point is ``grasp_offset_m`` from the blob's centre toward it, on the
        table plane. None when not applicable or undecidable.
        """
        if app.grasp_offset_m <= 0 or self.camera is None:
            return None
        du, dv, half = comp["axis"]
        cu, cv = comp["centre"]
        img = image.astype(np.float32)
        grey = np.abs(_chroma(img) - 1.0).max(axis=-1) < 0.08
        metal = grey & (img.sum(axis=-1) > 330) & self.foreground(image)
        h, w = metal.shape
        counts = []
        for sign in (1.0, -1.0):
            n = 0
            for t in np.arange(half + 0.5, half + 4.5, 1.0):
                u, v = int(round(cu + sign * t * du)), int(round(cv + sign * t * dv))
                if 0 <= u < w and 0 <= v < h:
                    n += int(metal[max(0, v - 1) : v + 2, max(0, u - 1) : u + 2].any())
            counts.append(n)
        if counts[0] == counts[1]:
            return None
        sign = 1.0 if counts[0] > counts[1] else -1.0
        cam = self.camera
        sx, sy = cam.width / image.shape[1], cam.height / image.shape[0]
        try:
            p0 = cam.pixel_to_plane(cu * sx, cv * sy, plane_z=app.height_m)
            p1 = cam.pixel_to_plane((cu + sign * half * du) * sx, (cv + sign * half * dv) * sy, plane_z=app.height_m)
        except ValueError:
            return None
        d = p1 - p0
        if np.linalg.norm(d[:2]) < 1e-9:
            return None
        grasp = p0 + app.grasp_offset_m * d / np.linalg.norm(d)
        u, v = cam.project(grasp[None, :])[0]
        return float(u / sx), float(v / sy)

    def _nearest_fixed(self, rgb: np.ndarray) -> str | None:
        """The fixed appearance (receptacle) nearest to a mean blob colour: chroma plus log brightness."""
        best, best_d = None, math.inf
        c = _chroma(np.asarray(rgb, np.float32))
        for name, a in self.appearances.items():
            if not a.fixed:
                continue
            ref = np.asarray(a.rgb, np.float32)
            d = float(np.abs(c - _chroma(ref)).max()) * 4 + abs(math.log((float(rgb.sum()) + 1) / (float(ref.sum()) + 1)))
            if d < best_d:
                best, best_d = name, d
        return best

    def _match(self, comp: dict, app: Appearance) -> float:
        """How well one component fits one appearance (0..1) by size and elongation."""
        score = 1.0
        if app.area_m2 > 0 and comp["area_m2"] is not None:
            ratio = comp["area_m2"] / app.area_m2
            if app.fixed and not 0.3 < ratio < 2.5:
                return 0.0
            score *= math.exp(-abs(math.log(max(ratio, 1e-3))))
        if app.elongation > 0:
            score *= math.exp(-1.5 * abs(math.log(comp["elong"] / app.elongation)))
        return score

    def _assign(self, comps: list[dict], group: list[str]) -> list[tuple[Detection, dict]]:
        """Components -> named detections. Within a colour group, names take components one to one,
        best match first; a name's other components stay as low-score alternatives."""
        fit = {(g, i): self._match(c, self.appearances[g]) for g in group for i, c in enumerate(comps)}
        primary: dict[str, int] = {}
        used: set[int] = set()
        for (g, i), f in sorted(fit.items(), key=lambda kv: -kv[1]):
            if f <= 0 or g in primary or i in used:
                continue
            primary[g] = i
            used.add(i)
        dets: list[tuple[Detection, dict]] = []
        for g in group:
            for i, c in enumerate(comps):
                f = fit[(g, i)]
                if f <= 0:
                    continue
                rivals = max((fit[(o, i)] for o in group if o != g), default=0.0)
                # certainty: this name's fit relative to the best other name for the same blob
                certainty = f / (f + rivals) if rivals > 0 else 1.0
                score = (0.4 + 0.6 * f) * certainty * (1.0 if primary.get(g) == i else 0.3)
                dets.append((Detection(g, c["centre"], c["bbox"], int(c["area"]), float(round(score, 4))), c))
        return dets

    def locate(self, image: np.ndarray, name: str) -> Detection | None:
        dets = self.detect(image, [name])
        return max(dets, key=lambda d: d.score) if dets else None

    def height_of(self, name: str) -> float:
        app = self.appearances.get(name.lower())
        return app.height_m if app else 0.0


def _visible_blob(kind: str, r: float, h: float, sin_e: float, cos_e: float) -> tuple[float, float]:
    """(area m^2, elongation) of the coloured blob of a sim item as the camera sees it.

    Horizontal faces shrink by sin(elevation), vertical ones by cos(elevation). Cutlery shows a
    coloured handle (0.075 x 0.016 m), a napkin a 0.075 m square, a can its coloured side; other
    kinds are coloured cylinders (top disc + side).
    """
    if kind in ("fork", "spoon", "knife"):
        return 0.075 * 0.016 * sin_e, 3.0  # long axis at a random yaw: 4.7 across, ~3.8 along the view
    if kind == "napkin":
        return 0.075 * 0.075 * sin_e, 1.15
    if kind == "can":
        return 2 * r * h * cos_e, max(2 * r, h * cos_e) / min(2 * r, h * cos_e)
    wide, tall = 2 * r, 2 * r * sin_e + h * cos_e
    return math.pi * r * r * sin_e + 2 * r * h * cos_e, max(wide, tall) / min(wide, tall)


@dataclass
class GroundingInfo:
    """What grounding found and decided (for the monitor's record and the report)."""

    object_pixel: tuple[float, float] | None = None  # (u, v) in the current frame
    object_world: tuple[float, float, float] | None = None  # table frame
    subgoal_pixel: tuple[float, float] | None = None  # where the object is in the predicted subgoal
    subgoal_world: tuple[float, float, float] | None = None
    target_pixel: tuple[float, float] | None = None  # the destination (receptacle/part) in the frame
    consistency: float | None = None  # sentence vs subgoal image agreement (0..1), None if not checkable
    confidence: float = 0.0
    resolved_from: list[str] = field(default_factory=list)  # candidates when the image chose
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pick_by_selector(dets: list[Detection], ordinal: int | None, side: str | None) -> Detection | None:
    """"the second cup" = second from the left (image u); "left/right" by u; "front/back" by v."""
    if not dets:
        return None
    if side is not None:
        key = {
            "left": lambda d: d.center[0],
            "right": lambda d: -d.center[0],
            "front": lambda d: -d.center[1],  # nearer the camera = lower in the image
            "back": lambda d: d.center[1],
            "middle": lambda d: abs(d.center[0] - float(np.median([x.center[0] for x in dets]))),
        }[side]
        ordered = sorted(dets, key=key)
        if ordinal is None:
            return ordered[0]
    else:
        ordered = sorted(dets, key=lambda d: d.center[0])
    if ordinal == -1:
        return ordered[-1]
    if ordinal is not None and 1 <= ordinal <= len(ordered):
        return ordered[ordinal - 1]
    return None


class Grounder:
    """Parsed step + current frame + predicted subgoal image -> grounded ActionGoal."""

    def __init__(self, detector: Detector, camera: CameraModel, strict: bool = True,
                 move_threshold_px: float = 2.0, change_threshold: int = 40,
                 target_names: Sequence[str] = ()) -> None:
        self.detector = detector
        self.camera = camera
        self.target_names = tuple(t.lower() for t in target_names)  # the scene's destinations (side-named ones)
        # strict: an object not found makes the goal UNGROUNDED (a robot needs a pose). Not strict:
        # the goal stays OK with confidence 0 and a note (the sim executes skills by name).
        self.strict = strict
        self.move_threshold_px = move_threshold_px
        self.change_threshold = change_threshold

    def to_world(self, pixel: tuple[float, float], image_shape: tuple[int, ...], height_m: float = 0.0,
                 ) -> tuple[float, float, float]:
        """Pixel of an image of ``image_shape`` -> table-frame point on the plane z = height_m."""
        sx = self.camera.width / image_shape[1]
        sy = self.camera.height / image_shape[0]
        # Pixel centres: image pixel u covers [u, u+1); camera cx uses integer centres.
        u = (pixel[0] + 0.5) * sx - 0.5
        v = (pixel[1] + 0.5) * sy - 0.5
        p = self.camera.pixel_to_plane(u, v, plane_z=height_m)
        return (float(p[0]), float(p[1]), float(p[2]))

    def _height(self, name: str) -> float:
        f = getattr(self.detector, "height_of", None)
        return float(f(name)) if f else 0.0

    def _changed(self, image: np.ndarray, subgoal: np.ndarray | None) -> np.ndarray | None:
        """(H, W) bool at ``image``'s size: where the predicted subgoal differs from ``image``."""
        if subgoal is None:
            return None
        if subgoal.shape != image.shape:
            import cv2

            subgoal = cv2.resize(subgoal, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
        return np.abs(subgoal.astype(np.int16) - image.astype(np.int16)).max(axis=2) > self.change_threshold

    @staticmethod
    def _best(dets: list[Detection], name: str, changed: np.ndarray | None) -> Detection | None:
        """The detection of ``name`` to act on; the region the subgoal changes breaks ties between
        look-alikes (the object a step acts on is the one whose pixels the step changes)."""
        own = [d for d in dets if d.name == name]
        if not own:
            return None
        if changed is None:
            return max(own, key=lambda d: d.score)

        def weight(d: Detection) -> float:
            u0, v0, u1, v1 = d.bbox
            overlap = float(changed[v0:v1, u0:u1].mean()) if u1 > u0 and v1 > v0 else 0.0
            return d.score * (0.25 + overlap)

        return max(own, key=weight)

    def _locate_target(self, image: np.ndarray, target: str) -> Detection | None:
        """The destination in ``image``.

        Identical receptacles named by their side ("left bin", "middle bin", "right bin") look the
        same: when as many of them are seen as the scene names (``target_names``), they are matched
        left to right in the image; otherwise the destination is not located (no guess).
        """
        target = target.lower()
        dets = [d for d in self.detector.detect(image, [target]) if d.name == target]
        if not dets:
            return None
        words = target.split()
        side = next((SIDE_WORDS[w] for w in words if w in SIDE_WORDS), None)
        distinct = sorted({d.bbox: d for d in sorted(dets, key=lambda d: d.score)}.values(), key=lambda d: d.center[0])
        if side is None:
            return max(dets, key=lambda d: d.score)
        rest = [w for w in words if w not in SIDE_WORDS]
        order = {"left": 0, "middle": 1, "right": 2}
        siblings = sorted(
            (t for t in self.target_names if [w for w in t.split() if w not in SIDE_WORDS] == rest
             and any(SIDE_WORDS.get(w) in order for w in t.split())),
            key=lambda t: next(order[SIDE_WORDS[w]] for w in t.split() if SIDE_WORDS.get(w) in order),
        )
        if len(siblings) < 2:  # the only one of its kind ("left bin" alone): no ordering needed
            return max(dets, key=lambda d: d.score)
        if side not in order or target not in siblings or len(siblings) != len(distinct):
            return None
        return distinct[siblings.index(target)]

    def ground(
        self,
        parsed: ParsedStep,
        goal: ActionGoal,
        frame: Frame,
        subgoal: np.ndarray | None,
    ) -> tuple[ActionGoal, GroundingInfo]:
        """Resolve the object, locate it now and in the subgoal, set target_pose and confidence."""
        info = GroundingInfo()
        if parsed.obj is None or goal.status != GoalStatus.OK:
            return goal, info
        ref = parsed.obj
        names = list(ref.candidates) if ref.candidates else [goal.object]
        dets = self.detector.detect(frame.image, names)
        changed = self._changed(frame.image, subgoal)
        if ref.needs_image:
            per_name = [d for d in (self._best(dets, n, None) for n in names) if d is not None]
            chosen = _pick_by_selector(per_name, ref.ordinal, ref.side)
            info.resolved_from = names
            if chosen is None:
                why = (f"cannot resolve {ref.text!r}: {len(per_name)} of {len(names)} candidates visible "
                       f"({', '.join(sorted(d.name for d in per_name)) or 'none'})")
                return dataclasses.replace(goal, status=GoalStatus.UNGROUNDED, confidence=0.0, reason=why), info
            name = chosen.name
            det: Detection | None = chosen
        else:
            name = goal.object
            det = self._best(dets, name, changed)
        h = self._height(name)
        if det is None:
            why = f"{name!r} not found in the current frame"
            if goal.verb in ("place", "stack"):
                info.notes.append(why + " (a held object may be hidden by the gripper)")
            elif self.strict:
                return dataclasses.replace(goal, object=name, status=GoalStatus.UNGROUNDED, confidence=0.0,
                                           reason=why), info
            else:
                info.notes.append(why)
        else:
            info.object_pixel = det.center
            info.object_world = self.to_world(det.base or det.center, frame.image.shape, h)
        # Where the object is in the predicted subgoal image, and the destination in the frame.
        sub_det = None
        if subgoal is not None:
            changed_sub = self._changed(subgoal, frame.image)
            sub_det = self._best(self.detector.detect(subgoal, [name]), name, changed_sub)
        if sub_det is not None:
            info.subgoal_pixel = sub_det.center
            info.subgoal_world = self.to_world(sub_det.base or sub_det.center, subgoal.shape, h)
        tgt_det = self._locate_target(frame.image, goal.target) if goal.target else None
        if tgt_det is not None:
            info.target_pixel = tgt_det.center
        info.consistency = self._consistency(goal.verb, det, sub_det, tgt_det, frame.image.shape, subgoal)
        # target_pose: pick -> where the object is now; place/stack -> where the subgoal shows it,
        # else the destination's position in the frame.
        pose: tuple[float, float, float] | None = None
        if goal.verb in ("pick", "push", "open", "close"):
            pose = info.object_world
        elif goal.verb == "fold":
            pose = info.subgoal_world or info.object_world  # a fold's goal is where the part ends up
        elif goal.verb in ("place", "stack"):
            if info.subgoal_world is not None:
                pose = info.subgoal_world
            elif tgt_det is not None:
                pose = self.to_world(tgt_det.center, frame.image.shape, self._height(goal.target or ""))
        if det is None and goal.verb not in ("place", "stack"):
            conf = 0.0
        else:
            det_score = det.score if det is not None else 0.5
            conf = det_score * (0.5 + 0.5 * info.consistency if info.consistency is not None else 0.8)
        info.confidence = float(round(conf, 4))
        grounded = dataclasses.replace(
            goal, object=name, target_pose=pose, frame_id=self.camera.world_frame_id, stamp=frame.stamp,
            confidence=info.confidence, reason=goal.reason or "; ".join(info.notes),
        )
        return grounded, info

    def _consistency(
        self,
        verb: str,
        det: Detection | None,
        sub_det: Detection | None,
        tgt_det: Detection | None,
        shape: tuple[int, ...],
        subgoal: np.ndarray | None,
    ) -> float | None:
        """Does the predicted subgoal show what the sentence says? (0 = contradicts, 1 = agrees)."""
        if subgoal is None:
            return None
        if det is None:
            return 0.5 if verb in ("place", "stack") else 0.0
        if sub_det is None:
            # Gone from view in the subgoal: plausible for a place into a deep receptacle, not for a pick.
            return 0.6 if verb in ("place", "stack") else 0.3
        sx, sy = shape[1] / subgoal.shape[1], shape[0] / subgoal.shape[0]
        moved = math.hypot(sub_det.center[0] * sx - det.center[0], sub_det.center[1] * sy - det.center[1])
        if verb in ("pick", "fold", "push"):
            return 1.0 if moved >= self.move_threshold_px else 0.2
        if verb in ("place", "stack") and tgt_det is not None:
            u0, v0, u1, v1 = tgt_det.bbox
            u, v = sub_det.center[0] * sx, sub_det.center[1] * sy
            margin = 0.25 * max(u1 - u0, v1 - v0)
            inside = u0 - margin <= u <= u1 + margin and v0 - margin <= v <= v1 + margin
            return 1.0 if inside else 0.2
        return 0.7
