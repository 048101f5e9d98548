"""Drawing: perspective-correct, anti-aliased polygons on a cached table background.

Everything is drawn with OpenCV at the target resolution using ``cv2.LINE_AA`` and 4 bits of
sub-pixel precision. What never moves during an episode (table texture, lighting, receptacles) is
rendered once per reset; objects at rest are drawn into a "static layer" that is redrawn only when
something is grasped or released; every frame only copies that layer and draws the gripper (and
what it holds). That is what makes 128 px rendering cost tens of microseconds per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from emu_guide.types import CameraModel
from sim_envs.camera import projection_matrix, table_coordinates

SHIFT = 4  # sub-pixel bits for cv2 drawing
SCALE = float(1 << SHIFT)
TABLE_HALF_X = 0.36  # table extent (m): x in [-0.36, 0.36]
TABLE_HALF_Y = 0.52

Colour = tuple[float, float, float]


def shade(colour: Colour | np.ndarray, factor: float) -> Colour:
    """Colour scaled by ``factor`` and clipped to [0, 255]."""
    c = np.clip(np.asarray(colour, dtype=np.float64) * factor, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def circle_points(cx: float, cy: float, z: float, r: float, n: int = 20) -> np.ndarray:
    """(n, 3) points of a horizontal circle."""
    a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a), np.full(n, z)], axis=1)


def rect_points(cx: float, cy: float, z: float, lx: float, ly: float, yaw: float = 0.0) -> np.ndarray:
    """(4, 3) corners of a horizontal rectangle of size lx by ly rotated by ``yaw`` about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[-lx, -ly], [lx, -ly], [lx, ly], [-lx, ly]]) / 2.0
    xy = local @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])
    return np.concatenate([xy, np.full((4, 1), z)], axis=1)


@dataclass
class Lighting:
    """Per-episode light: a soft spot on the table plus ambient, and the shadow direction."""

    spot_xy: tuple[float, float]
    ambient: float  # brightness far from the spot (0..1)
    gain: float  # overall brightness multiplier
    shadow_dir: tuple[float, float]  # table-plane offset of a shadow per metre of object height


class Prims:
    """Recorded drawing primitives (world points + op + colour), replayed with one projection.

    Drawing a moving thing (the gripper, the held object) primitive by primitive costs a numpy
    projection per polygon; recording it once and replaying it translated costs one in all.
    """

    def __init__(self) -> None:
        self.ops: list[tuple[str, Colour, int]] = []  # (op, colour, thickness)
        self.chunks: list[np.ndarray] = []
        self.pts = np.zeros((0, 3))
        self.bounds: list[tuple[int, int]] = []

    def add(self, op: str, pts: np.ndarray, colour: Colour, thickness: int = 1) -> None:
        self.ops.append((op, colour, thickness))
        self.chunks.append(np.asarray(pts, dtype=np.float64))

    def freeze(self) -> Prims:
        self.pts = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 3))
        ends = np.cumsum([len(c) for c in self.chunks])
        self.bounds = [(int(e - len(c)), int(e)) for c, e in zip(self.chunks, ends)]
        return self


class Painter:
    """Projects world points with the episode camera and draws filled shapes.

    With ``record`` set to a :class:`Prims`, drawing calls are recorded instead of drawn.
    """

    def __init__(self, camera: CameraModel) -> None:
        self.camera = camera
        self.P = projection_matrix(camera)
        self.record: Prims | None = None

    def replay(self, img: np.ndarray, prims: Prims, offset: np.ndarray | None = None) -> None:
        """Draw recorded primitives, all translated by ``offset`` (3,)."""
        if not prims.ops:
            return
        pts = prims.pts if offset is None else prims.pts + offset
        px = self._fixed(pts)
        for (op, colour, thickness), (a, b) in zip(prims.ops, prims.bounds):
            seg = px[a:b]
            if op == "fill":
                cv2.fillPoly(img, [seg], colour, cv2.LINE_AA, SHIFT)
            elif op == "hull":
                cv2.fillConvexPoly(img, cv2.convexHull(seg), colour, cv2.LINE_AA, SHIFT)
            else:
                cv2.line(img, (int(seg[0, 0]), int(seg[0, 1])), (int(seg[1, 0]), int(seg[1, 1])), colour, thickness, cv2.LINE_AA, SHIFT)

    def project(self, pts: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 2) pixels."""
        h = pts @ self.P[:, :3].T + self.P[:, 3]
        return h[:, :2] / h[:, 2:3]

    def _fixed(self, pts: np.ndarray) -> np.ndarray:
        return np.round(self.project(pts) * SCALE).astype(np.int32)

    def fill(self, img: np.ndarray, pts: np.ndarray, colour: Colour) -> None:
        """Fill the projected polygon of world points ``pts`` (N, 3)."""
        if self.record is not None:
            self.record.add("fill", pts, colour)
            return
        cv2.fillPoly(img, [self._fixed(pts)], colour, cv2.LINE_AA, SHIFT)

    def fill_hull(self, img: np.ndarray, pts: np.ndarray, colour: Colour) -> None:
        """Fill the convex hull of the projected points (the silhouette of a convex solid)."""
        if self.record is not None:
            self.record.add("hull", pts, colour)
            return
        hull = cv2.convexHull(self._fixed(pts))
        cv2.fillConvexPoly(img, hull, colour, cv2.LINE_AA, SHIFT)

    def line(self, img: np.ndarray, a: np.ndarray, b: np.ndarray, colour: Colour, thickness: int = 1) -> None:
        if self.record is not None:
            self.record.add("line", np.stack([a, b]), colour, thickness)
            return
        p = self._fixed(np.stack([a, b]))
        cv2.line(img, tuple(int(x) for x in p[0]), tuple(int(x) for x in p[1]), colour, thickness, cv2.LINE_AA, SHIFT)

    def cylinder(
        self, img: np.ndarray, cx: float, cy: float, z0: float, h: float, r: float, side: Colour, top: Colour
    ) -> None:
        """A vertical cylinder: silhouette in the side colour, then its top disc."""
        topc = circle_points(cx, cy, z0 + h, r)
        if h > 1e-4:
            self.fill_hull(img, np.concatenate([circle_points(cx, cy, z0, r), topc]), side)
        self.fill(img, topc, top)

    def box(
        self, img: np.ndarray, cx: float, cy: float, z0: float, lx: float, ly: float, h: float, yaw: float,
        side: Colour, top: Colour,
    ) -> None:
        """An upright box: silhouette in the side colour, then its top face."""
        topc = rect_points(cx, cy, z0 + h, lx, ly, yaw)
        if h > 1e-4:
            self.fill_hull(img, np.concatenate([rect_points(cx, cy, z0, lx, ly, yaw), topc]), side)
        self.fill(img, topc, top)

    def shadow(self, img: np.ndarray, footprints: list[np.ndarray], strength: float = 0.35) -> None:
        """Darken ``img`` under the given table-plane polygons (N, 3) with soft edges (in place).

        Works on each polygon's bounding box only (a full-image blur per redraw would dominate).
        """
        h, w = img.shape[:2]
        for f in footprints:
            px = self.project(f)
            u0, v0 = np.floor(px.min(axis=0)).astype(int) - 3
            u1, v1 = np.ceil(px.max(axis=0)).astype(int) + 4
            u0, v0, u1, v1 = max(0, u0), max(0, v0), min(w, u1), min(h, v1)
            if u0 >= u1 or v0 >= v1:
                continue
            mask = np.zeros((v1 - v0, u1 - u0), dtype=np.uint8)
            local = np.round((px - [u0, v0]) * SCALE).astype(np.int32)
            cv2.fillPoly(mask, [local], 255, cv2.LINE_AA, SHIFT)
            mask = cv2.GaussianBlur(mask, (5, 5), 0)
            roi = img[v0:v1, u0:u1]
            roi[:] = (roi * (1.0 - (strength / 255.0) * mask.astype(np.float32))[..., None]).astype(np.uint8)

    def soft_spot(self, img: np.ndarray, x: float, y: float, r: float, strength: float) -> None:
        """A small round shadow (the gripper's) darkening a region of interest (fast, per frame)."""
        centre = self.project(np.array([[x, y, 0.0]]))[0]
        edge = self.project(np.array([[x + r, y, 0.0]]))[0]
        rad = max(1.0, float(np.linalg.norm(edge - centre)))
        h, w = img.shape[:2]
        u0, u1 = int(max(0, centre[0] - rad - 1)), int(min(w, centre[0] + rad + 2))
        v0, v1 = int(max(0, centre[1] - rad - 1)), int(min(h, centre[1] + rad + 2))
        if u0 >= u1 or v0 >= v1:
            return
        vv, uu = np.mgrid[v0:v1, u0:u1]
        d = np.sqrt((uu - centre[0]) ** 2 + (vv - centre[1]) ** 2) / rad
        factor = 1.0 - strength * np.clip(1.2 - d, 0.0, 1.0)
        roi = img[v0:v1, u0:u1]
        roi[:] = (roi * factor[..., None]).astype(np.uint8)


TABLE_STYLES = ("light wood", "dark wood", "grey laminate", "green cloth", "white marble")
TABLE_BASE: dict[str, Colour] = {  # base RGB of each table style
    "light wood": (196, 160, 112),
    "dark wood": (120, 84, 56),
    "grey laminate": (150, 150, 146),
    "green cloth": (70, 112, 84),
    "white marble": (214, 212, 204),
}


def sample_lighting(rng: np.random.Generator) -> Lighting:
    ang = rng.uniform(0, 2 * np.pi)
    return Lighting(
        spot_xy=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.35, 0.35))),
        ambient=float(rng.uniform(0.6, 0.8)),
        gain=float(rng.uniform(0.9, 1.1)),
        shadow_dir=(float(0.5 * np.cos(ang)), float(0.5 * np.sin(ang))),
    )


def table_background(camera: CameraModel, rng: np.random.Generator, style: str, light: Lighting) -> np.ndarray:
    """The table (textured, lit, perspective-correct) and the floor around it: HxWx3 uint8."""
    X, Y = table_coordinates(camera)
    base = np.asarray(TABLE_BASE[style], dtype=np.float32) * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, size=4)
    if style.endswith("wood"):  # grain: wavy stripes along y
        t = 0.5 + 0.5 * np.sin(90.0 * Y + 1.5 * np.sin(7.0 * X + ph[0]) + 0.8 * np.sin(23.0 * X + ph[1]))
        tex = 0.88 + 0.12 * t
    elif style == "green cloth":  # fine weave
        tex = 0.94 + 0.06 * np.sin(260.0 * X + ph[0]) * np.sin(260.0 * Y + ph[1])
    elif style == "white marble":  # soft veins
        t = np.abs(np.sin(12.0 * X + 9.0 * Y + 2.0 * np.sin(17.0 * Y + ph[2]) + ph[3]))
        tex = 0.9 + 0.1 * t
    else:
        tex = 0.97 + 0.03 * np.sin(40.0 * X + ph[0]) * np.sin(31.0 * Y + ph[1])
    spot = np.exp(-((X - light.spot_xy[0]) ** 2 + (Y - light.spot_xy[1]) ** 2) / (2 * 0.35**2))
    lit = light.gain * (light.ambient + (1.0 - light.ambient) * spot)
    table = base[None, None, :] * (tex * lit)[..., None]
    # Soft table edge: coverage from the distance to the edge in pixels.
    metres_per_px = np.abs(X[1:, :] - X[:-1, :]).mean() + 1e-6
    dist = np.minimum(TABLE_HALF_X - np.abs(X), TABLE_HALF_Y - np.abs(Y)) / metres_per_px
    cover = np.clip(dist + 0.5, 0.0, 1.0)[..., None]
    floor = np.asarray((58, 56, 62), dtype=np.float32) * (0.6 + 0.4 * lit)[..., None]
    img = cover * table + (1.0 - cover) * floor
    return np.clip(img, 0, 255).astype(np.uint8)


GRIPPER_BASE = np.array([-0.62, -0.55, 0.62])  # where the arm comes from (off-image, near right)
_GRIPPER_METAL = (92, 96, 108)
_FINGER = (60, 62, 70)


def record_gripper(painter: Painter, closed: bool) -> Prims:
    """The fingers and wrist at end-effector position (0, 0, 0), to be replayed translated."""
    prims = Prims()
    painter.record = prims
    try:
        gap = 0.012 if closed else 0.03
        for side in (-1.0, 1.0):
            painter.box(None, 0.0, side * gap, 0.0, 0.014, 0.008, 0.06, 0.0, shade(_FINGER, 0.8), _FINGER)  # type: ignore[arg-type]
        painter.box(None, 0.0, 0.0, 0.055, 0.03, 2 * gap + 0.016, 0.02, 0.0, shade(_GRIPPER_METAL, 0.8), _GRIPPER_METAL)  # type: ignore[arg-type]
    finally:
        painter.record = None
    return prims.freeze()


class GripperSprite:
    """Per-episode cache for drawing the arm and gripper quickly."""

    def __init__(self, painter: Painter, resolution: int) -> None:
        self.painter = painter
        self.prims = {False: record_gripper(painter, False), True: record_gripper(painter, True)}
        self.base_px = painter.project(GRIPPER_BASE[None, :])[0]
        self.thickness = max(2, resolution // 32)
        # Shadow kernel: radius of 3.5 cm at the table centre, in pixels.
        rad = float(np.linalg.norm(painter.project(np.array([[0.035, 0.0, 0.0]])) - painter.project(np.zeros((1, 3)))))
        self.shadow_r = max(1, int(np.ceil(rad)))
        yy, xx = np.mgrid[-self.shadow_r : self.shadow_r + 1, -self.shadow_r : self.shadow_r + 1]
        self.shadow_kernel = np.clip(1.2 - np.sqrt(xx**2 + yy**2) / rad, 0.0, 1.0).astype(np.float32)

    def draw(self, img: np.ndarray, ee: np.ndarray, closed: bool) -> None:
        x, y, z = float(ee[0]), float(ee[1]), float(ee[2])
        pts = self.painter.project(np.array([[x, y, 0.0], [x, y, z + 0.07]]))
        # soft shadow on the table under the gripper, fainter when it is high
        strength = 0.35 * max(0.2, 1.0 - z / 0.4)
        cu, cv = int(round(pts[0, 0])), int(round(pts[0, 1]))
        r = self.shadow_r
        h, w = img.shape[:2]
        u0, u1, v0, v1 = max(0, cu - r), min(w, cu + r + 1), max(0, cv - r), min(h, cv + r + 1)
        if u0 < u1 and v0 < v1:
            k = self.shadow_kernel[v0 - (cv - r) : v1 - (cv - r), u0 - (cu - r) : u1 - (cu - r)]
            roi = img[v0:v1, u0:u1]
            roi[:] = (roi * (1.0 - strength * k)[..., None]).astype(np.uint8)
        a = np.round(self.base_px * SCALE).astype(int)
        b = np.round(pts[1] * SCALE).astype(int)
        cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), _GRIPPER_METAL, self.thickness, cv2.LINE_AA, SHIFT)
        self.painter.replay(img, self.prims[closed], np.array([x, y, z]))
