"""FoldCloth: fold a T-shirt in seven steps; the shirt is a 2D particle model folded by reflections."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from emu_guide.types import ActionGoal, PlanStep
from sim_envs.base import SkillError, TabletopEnv, Waypoint
from sim_envs.rigid import PALETTE

SPACING = 0.013  # particle lattice spacing (m)
GRASP_RADIUS = 0.02  # a closing gripper grasps the nearest particle within this distance
GRASP_Z = 0.035  # ... if its fingertips are at most this high
CHECK_TOL = 0.02  # a fold is done when its part's tracked particle is this close to the target point
SHIRT_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "teal", "black")

# part -> target it may be folded to (one each: the fold is defined by the pair)
FOLDS: dict[str, str] = {
    "left sleeve": "centre",
    "right sleeve": "centre",
    "left side": "centre",
    "right side": "centre",
    "bottom": "middle",
    "top": "bottom",
    "left half": "right half",
    "right half": "left half",
}
TARGETS = ("centre", "middle", "bottom", "left half", "right half")

INSTRUCTIONS_LEFT = (
    "fold the T-shirt",
    "fold the shirt neatly",
    "please fold this t-shirt",
    "fold the T-shirt, starting with the left sleeve",
)
INSTRUCTIONS_RIGHT = (
    "fold the T-shirt, starting with the right sleeve",
    "fold the shirt, right side first",
    "please fold this t-shirt beginning with the right sleeve",
)


def fold_particles(P: np.ndarray, layer: np.ndarray, flipped: np.ndarray, p: np.ndarray, q: np.ndarray) -> None:
    """Fold the cloth so that point ``p`` lands on ``q`` (in place).

    The fold line is the perpendicular bisector of p and q; every particle on p's side is
    reflected across it and stacked on top, in reversed layer order (what was underneath ends up on top).
    """
    d = p - q
    dist = float(np.linalg.norm(d))
    if dist < 1e-6:
        return
    n = d / dist
    m = (p + q) / 2
    s = (P - m) @ n  # signed distance to the line, > 0 on p's side
    moved = s > 1e-9
    if not moved.any():
        return
    P[moved] -= 2.0 * s[moved, None] * n[None, :]
    top = layer.max()
    layer[moved] = top + 1 + (layer[moved].max() - layer[moved])
    flipped[moved] = ~flipped[moved]


class FoldClothEnv(TabletopEnv):
    """FoldCloth: a T-shirt folded in seven steps (sleeves, sides, bottom, top, halves).

    ## Description
    The shirt (random size, colour, pattern, position and small rotation) lies flat, collar away
    from the camera. It is a lattice of particles; grasping the cloth (closing the gripper low
    over it) and releasing it elsewhere folds it so the grasped point lands where it was released
    (reflection across the bisector line; the moved part lands on top, back side up). Steps:
    "fold the left sleeve to the centre", "fold the right sleeve to the centre", "fold the left
    side to the centre", "fold the right side to the centre", "fold the bottom up to the middle",
    "fold the top down to the bottom", "fold the left half onto the right half". Instructions
    that say so start with the right (and end folding the right half onto the left half).
    Each step is checked geometrically: the part's tracked particle must lie within 2 cm of the
    target point. While a part is held, each frame shows the fold it would make if released at
    the gripper's position, so the flap follows the gripper across the shirt.

    See :class:`sim_envs.base.TabletopEnv` for spaces, rewards and episode end.
    """

    task_name = "fold_cloth"
    verbs = ("fold",)
    TRAVEL_Z = 0.10

    def _state_fields(self) -> tuple[str, ...]:
        return ("P", "layer", "flipped", "grasp")

    def _sample_task(self, rng: np.random.Generator) -> None:
        W = float(rng.uniform(0.26, 0.31))  # body width
        H = float(rng.uniform(0.33, 0.38))  # body length, hem to shoulders
        L = float(rng.uniform(0.085, 0.115))  # sleeve length
        sw = float(rng.uniform(0.10, 0.125))  # sleeve opening width
        nw, nd = 0.27 * W, 0.045  # neck half-width (of the ellipse) and depth
        self.shirt_dims = {"width": W, "length": H, "sleeve": L}
        us = np.arange(0.0, H + 1e-9, SPACING)
        vs = np.arange(-(W / 2 + L), W / 2 + L + 1e-9, SPACING)
        vs = vs - vs.mean()
        uu, vv = np.meshgrid(us, vs, indexing="ij")
        uu, vv = uu.ravel(), vv.ravel()
        av = np.abs(vv)
        shoulder = H - 0.15 * np.maximum(0.0, av - nw * 0.6)
        in_body = (av <= W / 2) & (uu <= shoulder) & ((vv / nw) ** 2 + ((uu - H) / nd) ** 2 > 1.0)
        t = av - W / 2
        sh = H - 0.15 * (W / 2 - nw * 0.6)
        in_sleeve = (t > 0) & (t <= L) & (uu <= sh - 0.5 * t) & (uu >= sh - sw - 0.3 * t)
        keep = in_body | in_sleeve
        local = np.stack([uu[keep], vv[keep]], axis=1)  # (N, 2) shirt frame
        yaw = float(rng.uniform(-np.radians(8), np.radians(8)))
        origin = np.array([-H / 2 + rng.uniform(-0.03, 0.03), rng.uniform(-0.04, 0.04)])
        self._shirt_R = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        self._shirt_origin = origin
        self.P = local @ self._shirt_R.T + origin
        self.layer = np.zeros(len(local))
        self.flipped = np.zeros(len(local), dtype=bool)
        self.grasp: tuple[int, np.ndarray] | None = None

        colour = str(rng.choice(SHIRT_COLOURS))
        self.shirt_colour = colour
        base = np.asarray(PALETTE[colour], dtype=np.float64)
        trim = np.asarray(PALETTE[str(rng.choice([c for c in SHIRT_COLOURS if c != colour]))], dtype=np.float64)
        pattern = str(rng.choice(["plain", "stripes", "trim"]))
        self.shirt_pattern = pattern
        cols = np.repeat(base[None, :], len(local), axis=0)
        if pattern == "stripes":
            band = (np.floor(local[:, 0] / 0.04) % 2 == 1) & (np.abs(local[:, 1]) <= W / 2)
            cols[band] = 0.55 * base + 0.45 * trim
        elif pattern == "trim":
            cuff = np.abs(local[:, 1]) > W / 2 + L - 0.025
            collar = (local[:, 0] > H - nd - 0.025) & (np.abs(local[:, 1]) < nw + 0.02)
            cols[cuff | collar] = trim
        self._colours = cols

        def nearest(u: float, v: float) -> int:
            return int(np.argmin(np.sum((local - np.array([u, v])) ** 2, axis=1)))

        def world(u: float, v: float) -> np.ndarray:
            return np.array([u, v]) @ self._shirt_R.T + origin

        tip_t = 0.85 * L
        tip_u = sh - 0.5 * tip_t - 0.5 * (sw - 0.2 * tip_t)
        tracked = {
            "left sleeve": nearest(tip_u, W / 2 + tip_t),
            "right sleeve": nearest(tip_u, -(W / 2 + tip_t)),
            "left side": nearest(0.02, W / 2 - 0.006),
            "right side": nearest(0.02, -(W / 2 - 0.006)),
            "bottom": nearest(0.0, 0.0),
            "top": nearest(H - nd, 0.0),
            "left half": nearest(0.4 * H, W / 4 - 0.02),
            "right half": nearest(0.4 * H, -(W / 4 - 0.02)),
        }
        self._tracked = tracked
        lu = {k: local[i] for k, i in tracked.items()}
        self._target_points = {  # where each part's tracked particle goes (world xy)
            "left sleeve": world(lu["left sleeve"][0], W - lu["left sleeve"][1]),
            "right sleeve": world(lu["right sleeve"][0], -W - lu["right sleeve"][1]),
            "left side": world(lu["left side"][0], W / 2 - lu["left side"][1]),
            "right side": world(lu["right side"][0], -W / 2 - lu["right side"][1]),
            "bottom": world(H / 2 - lu["bottom"][0], lu["bottom"][1]),
            "top": world(H / 4, lu["top"][1]),
            "left half": world(lu["left half"][0], -lu["left half"][1]),
            "right half": world(lu["right half"][0], -lu["right half"][1]),
        }
        self.first_side = "left" if rng.random() < 0.5 else "right"
        pool = INSTRUCTIONS_LEFT if self.first_side == "left" else INSTRUCTIONS_RIGHT
        self.instruction = str(pool[int(rng.integers(len(pool)))])
        px_per_m = np.linalg.norm(self._painter.project(np.array([[0, 0, 0.0]])) - self._painter.project(np.array([[0, SPACING, 0.0]]))) / SPACING
        self._radius_px = 0.78 * SPACING * px_per_m
        k = int(np.ceil(self._radius_px))
        dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
        disk = dx**2 + dy**2 <= (self._radius_px + 0.35) ** 2
        self._stencil_k = k
        self._stencil_dx, self._stencil_dy = dx[disk].astype(np.int32), dy[disk].astype(np.int32)
        self._kernel3 = np.ones((3, 3), np.uint8)
        sx, sy = self.lighting.shadow_dir
        self._shadow_shift = self._painter.project(np.array([[sx * 0.012, sy * 0.012, 0.0]]))[0] - self._painter.project(np.zeros((1, 3)))[0]

    def object_names(self) -> list[str]:
        return list(FOLDS)

    def target_names(self) -> list[str]:
        return list(TARGETS)

    def is_holding(self) -> bool:
        return self.grasp is not None

    def _build_plan(self) -> list[PlanStep]:
        a, b = ("left", "right") if self.first_side == "left" else ("right", "left")
        steps = [
            (f"fold the {a} sleeve to the centre", f"{a} sleeve"),
            (f"fold the {b} sleeve to the centre", f"{b} sleeve"),
            (f"fold the {a} side to the centre", f"{a} side"),
            (f"fold the {b} side to the centre", f"{b} side"),
            ("fold the bottom up to the middle", "bottom"),
            ("fold the top down to the bottom", "top"),
            (f"fold the {a} half onto the {b} half", f"{a} half"),
        ]
        return [
            PlanStep(index=k, text=text, goal=ActionGoal("fold", part, target=FOLDS[part], step_index=k))
            for k, (text, part) in enumerate(steps)
        ]

    # ------------------------------------------------------------------ mechanics
    def grasp_candidate(self, x: float, y: float) -> int | None:
        """The particle a gripper closing at (x, y) would take: the nearest, then the topmost."""
        d = np.hypot(self.P[:, 0] - x, self.P[:, 1] - y)
        near = np.flatnonzero(d <= GRASP_RADIUS)
        if len(near) == 0:
            return None
        key = np.round(d[near], 4) - 1e-6 * self.layer[near]
        return int(near[np.argmin(key)])

    def _on_close(self) -> None:
        if self.ee[2] > GRASP_Z:
            return
        idx = self.grasp_candidate(float(self.ee[0]), float(self.ee[1]))
        if idx is not None:
            self.grasp = (idx, self.P[idx].copy())

    def _on_open(self) -> None:
        if self.grasp is None:
            return
        _, p = self.grasp
        self.grasp = None
        q = self.ee[:2].copy()
        if np.linalg.norm(q - p) > 0.01:
            fold_particles(self.P, self.layer, self.flipped, p, q)
            self._invalidate_static()

    # ------------------------------------------------------------------ checks and skills
    def _validate(self, verb: str, obj: str, target: str) -> None:
        if target != FOLDS[obj]:
            raise SkillError(f"cannot fold the {obj} to {target or None!r}; valid target for the {obj}: {FOLDS[obj]} (all targets: {', '.join(TARGETS)})")

    def _check(self, verb: str, obj: str, target: str) -> bool:
        if self.grasp is not None:
            return False
        return bool(np.linalg.norm(self.P[self._tracked[obj]] - self._target_points[obj]) < CHECK_TOL)

    def _waypoints(self, verb: str, obj: str, target: str) -> list[Waypoint] | str:
        if self.grasp is not None:
            return "already holding the cloth"
        p = self.P[self._tracked[obj]]
        q = self._target_points[obj]
        if np.linalg.norm(p - q) < CHECK_TOL / 2:
            return []
        px, py, qx, qy = float(p[0]), float(p[1]), float(q[0]), float(q[1])
        z = self.TRAVEL_Z
        return [
            Waypoint(np.array([px, py, z]), False, "above part"),
            Waypoint(np.array([px, py, 0.01]), False, "descend"),
            Waypoint(np.array([px, py, 0.01]), True, "grasp"),
            Waypoint(np.array([px, py, 0.06]), True, "lift"),
            Waypoint(np.array([qx, qy, 0.06]), True, "carry over the fold line"),
            Waypoint(np.array([qx, qy, 0.02]), True, "lay down"),
            Waypoint(np.array([qx, qy, 0.02]), False, "release"),
            Waypoint(np.array([qx, qy, z]), False, "retreat"),
        ]

    def miss_waypoints(self, part: str) -> list[Waypoint]:
        """A grasp attempt just outside ``part`` that closes on nothing (for the expert's mistakes)."""
        p = self.P[self._tracked[part]]
        out = p - self.P.mean(axis=0)
        out = out / (np.linalg.norm(out) + 1e-9)
        for dist in (0.045, 0.06, 0.08):
            m = p + dist * out
            if self.grasp_candidate(float(m[0]), float(m[1])) is None and np.all(np.abs(m) < [0.33, 0.45]):
                x, y = float(m[0]), float(m[1])
                return [
                    Waypoint(np.array([x, y, self.TRAVEL_Z]), False, "above (off target)"),
                    Waypoint(np.array([x, y, 0.01]), False, "descend"),
                    Waypoint(np.array([x, y, 0.01]), True, "close on nothing"),
                    Waypoint(np.array([x, y, self.TRAVEL_Z]), True, "lift empty"),
                    Waypoint(np.array([x, y, self.TRAVEL_Z]), False, "open"),
                ]
        return []

    def _final_ok(self) -> bool:
        last = self._plan[-1].goal
        return self.grasp is None and self._check("fold", last.object, last.target or "")

    def _privileged_extra(self) -> dict[str, Any]:
        parts = {}
        for name, idx in self._tracked.items():
            pos = np.array([*self.P[idx], 0.0])
            goal = np.array([*self._target_points[name], 0.0])
            parts[name] = {
                "position": pos.tolist(),  # the part's tracked particle now
                "pixel": list(self.pixel_of(pos)),
                "target": FOLDS[name],
                "target_position": goal.tolist(),  # where that particle goes when the part is folded
                "target_pixel": list(self.pixel_of(goal)),
            }
        targets = {}
        for tname in TARGETS:  # a target name means a different point per part: list them all
            points = {part: parts[part]["target_position"] for part, t in FOLDS.items() if t == tname}
            mean = np.mean(list(points.values()), axis=0)
            targets[tname] = {"position": mean.tolist(), "pixel": list(self.pixel_of(mean)), "for_parts": points}
        return {
            "objects": parts,
            "targets": targets,
            "cloth": {
                "particles": self.P.tolist(),
                "layers": self.layer.tolist(),
                "colour": self.shirt_colour,
                "pattern": self.shirt_pattern,
                **self.shirt_dims,
            },
            "held": None if self.grasp is None else "cloth",
        }

    # ------------------------------------------------------------------ drawing
    def _draw_scene_static(self, img: np.ndarray) -> None:
        self._splat_cloth(img, self.P, self.layer, self.flipped)

    def _draw_held(self, img: np.ndarray) -> None:
        """While a part is held, show the fold it would make if released here (the flap follows the gripper)."""
        if self.grasp is None:
            return
        p = self.grasp[1]
        q = self.ee[:2]
        if np.linalg.norm(q - p) < 0.005:
            return
        key = (float(p[0]), float(p[1]), float(q[0]), float(q[1]), self.P.tobytes())
        cached = getattr(self, "_preview", None)
        if cached is not None and cached[0] == key:  # lowering or lifting in place: same picture
            img[:] = cached[1]
            return
        P, layer, flipped = self.P.copy(), self.layer.copy(), self.flipped.copy()
        fold_particles(P, layer, flipped, p, q.copy())
        img[:] = self._background
        self._splat_cloth(img, P, layer, flipped)
        self._preview = (key, img.copy())

    def _splat_cloth(self, img: np.ndarray, P: np.ndarray, layer: np.ndarray, flipped: np.ndarray) -> None:
        """Splat the particles as small disks, top layer winning, then composite anti-aliased.

        Vectorised painter's algorithm: particles are written in ascending layer order into an
        id map (NumPy assigns repeated indices in order, so the last, i.e. topmost, wins).
        Pixels just outside a higher layer's edge are darkened (the fold's shadow), and the
        cloth is blended over the table through a slightly blurred coverage mask. Only the
        cloth's bounding box is touched.
        """
        H, W = img.shape[:2]
        L = self.lighting
        n = len(P)
        px = self._painter.project(np.concatenate([P, np.zeros((n, 1))], axis=1))
        pad = self._stencil_k + 6  # splat radius + blur and shadow margins
        lo = np.floor(px.min(axis=0)).astype(int) - pad
        hi = np.ceil(px.max(axis=0)).astype(int) + pad
        u0, v0, u1, v1 = max(0, lo[0]), max(0, lo[1]), min(W, hi[0]), min(H, hi[1])
        if u0 >= u1 or v0 >= v1:
            return
        roi = img[v0:v1, u0:u1]  # a view: drawing into it draws into the frame
        h, w = roi.shape[:2]
        order = np.argsort(layer, kind="stable")
        cu = np.round(px[order, 0]).astype(np.int32) - u0
        cv = np.round(px[order, 1]).astype(np.int32) - v0
        uu = (cu[:, None] + self._stencil_dx[None, :]).ravel()
        vv = (cv[:, None] + self._stencil_dy[None, :]).ravel()
        ids = np.repeat(order.astype(np.int32), len(self._stencil_dx))
        ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        idmap = np.full(h * w, n, dtype=np.int32)  # n = "no cloth" (a zero row below)
        idmap[(vv * w + uu)[ok]] = ids[ok]
        idmap = idmap.reshape(h, w)
        cloth = idmap < n

        spot = np.exp(-((P[:, 0] - L.spot_xy[0]) ** 2 + (P[:, 1] - L.spot_xy[1]) ** 2) / (2 * 0.35**2))
        light = 1.05 * L.gain * (L.ambient + (1 - L.ambient) * spot) * (1.0 + 0.025 * np.minimum(layer, 6))
        cols = np.zeros((n + 1, 3), dtype=np.float32)
        cols[:n] = self._colours * (np.where(flipped, 0.8, 1.0) * light)[:, None]
        layers = np.full(n + 1, -1.0, dtype=np.float32)
        layers[:n] = layer
        colour = np.take(cols, idmap, axis=0)  # (h, w, 3), zero off the cloth
        layer_map = np.take(layers, idmap)
        rim = cv2.dilate(layer_map, self._kernel3) > layer_map + 0.5
        colour[rim & cloth] *= 0.72  # lower layer just outside a fold edge

        mask = cloth.astype(np.float32)
        M = np.float32([[1, 0, self._shadow_shift[0]], [0, 1, self._shadow_shift[1]]])
        shadow = cv2.GaussianBlur(cv2.warpAffine(mask, M, (w, h)), (5, 5), 0)
        alpha = cv2.GaussianBlur(mask, (3, 3), 0.6)
        keep = (1.0 - 0.3 * shadow) * (1.0 - alpha)  # table: shadowed, and covered by the cloth's coverage
        # blur(colour) is the coverage-weighted cloth colour: colour * alpha, premultiplied
        out = roi.astype(np.float32) * cv2.merge([keep, keep, keep]) + cv2.GaussianBlur(colour, (3, 3), 0.6)
        roi[:] = np.clip(out, 0, 255).astype(np.uint8)
