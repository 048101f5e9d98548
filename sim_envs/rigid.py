"""Rigid objects and receptacles shared by TableClear and SortBlocks.

An item rests on the table, in a receptacle or on another item; closing the gripper near an
item's grasp point picks it up (the highest free item there), opening the gripper drops it onto
whatever is under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim_envs.base import SkillError, TabletopEnv, Waypoint
from sim_envs.render import Colour, Painter, Prims, circle_points, rect_points, shade

# Named colours items can take (RGB). Names are what the plan sentences say.
PALETTE: dict[str, Colour] = {
    "red": (205, 38, 38),
    "blue": (38, 82, 205),
    "green": (38, 152, 62),
    "yellow": (236, 204, 40),
    "orange": (240, 128, 28),
    "purple": (128, 56, 172),
    "pink": (240, 118, 172),
    "white": (238, 238, 232),
    "teal": (26, 150, 150),
    "black": (34, 34, 40),
}


@dataclass
class Item:
    """A rigid object. ``pos`` is the centre of its bottom face in the table frame."""

    name: str
    kind: str
    colour_name: str
    rgb: Colour
    pos: np.ndarray
    yaw: float
    radius: float  # footprint radius: spacing at sampling and grasp tolerance
    height: float
    location: str = "table"  # "table", a receptacle name, "gripper" or the name of the item below
    home: np.ndarray = field(default_factory=lambda: np.zeros(3))  # where it started

    @property
    def top(self) -> float:
        return float(self.pos[2] + self.height)


@dataclass
class Receptacle:
    """A fixed container or zone; items whose centre is inside its rectangle are in it."""

    name: str
    kind: str
    centre: tuple[float, float]
    size: tuple[float, float]  # (lx, ly) metres
    height: float  # wall height
    floor: float  # z of an item resting inside
    rgb: Colour
    slots: list[tuple[float, float]] = field(default_factory=list)

    def contains(self, x: float, y: float, margin: float = 0.0) -> bool:
        return (
            abs(x - self.centre[0]) <= self.size[0] / 2 - margin and abs(y - self.centre[1]) <= self.size[1] / 2 - margin
        )


def grid_slots(centre: tuple[float, float], size: tuple[float, float], nx: int, ny: int) -> list[tuple[float, float]]:
    """nx * ny evenly spread slot centres inside a rectangle, near row (small x) first."""
    xs = centre[0] + (np.arange(nx) - (nx - 1) / 2) * size[0] / nx
    ys = centre[1] + (np.arange(ny) - (ny - 1) / 2) * size[1] / ny
    return [(float(x), float(y)) for x in xs for y in ys]


def sample_positions(
    rng: np.random.Generator, radii: list[float], x_range: tuple[float, float], y_range: tuple[float, float],
    gap: float = 0.015, tries: int = 2000,
) -> list[np.ndarray]:
    """Non-overlapping (x, y) positions for discs of the given radii (rejection sampling)."""
    for _ in range(50):
        placed: list[np.ndarray] = []
        for r in radii:
            for _ in range(tries // max(1, len(radii))):
                p = np.array([rng.uniform(x_range[0] + r, x_range[1] - r), rng.uniform(y_range[0] + r, y_range[1] - r)])
                if all(np.linalg.norm(p - q) >= r + rq + gap for q, rq in zip(placed, radii)):
                    placed.append(p)
                    break
            else:
                break
        if len(placed) == len(radii):
            return placed
    raise RuntimeError(f"could not place {len(radii)} objects without overlap in x={x_range}, y={y_range}")


class RigidTabletopEnv(TabletopEnv):
    """Pick-and-place mechanics over ``self.items`` and ``self.receptacles``."""

    items: list[Item]
    receptacles: list[Receptacle]
    held: int | None

    def _state_fields(self) -> tuple[str, ...]:
        return ("items", "held", "_grasp_offset")

    # ------------------------------------------------------------------ helpers
    def item(self, name: str) -> Item:
        for it in self.items:
            if it.name == name:
                return it
        raise SkillError(f"unknown object {name!r}; valid objects: {', '.join(self.object_names())}")

    def receptacle(self, name: str) -> Receptacle:
        for r in self.receptacles:
            if r.name == name:
                return r
        raise SkillError(f"unknown target {name!r}; valid targets: {', '.join(r.name for r in self.receptacles)}")

    def object_names(self) -> list[str]:
        return [it.name for it in self.items]

    def is_holding(self) -> bool:
        return self.held is not None

    def held_name(self) -> str | None:
        return None if self.held is None else self.items[self.held].name

    def _lit(self, rgb: Colour, x: float, y: float) -> Colour:
        """Object colour under the episode light at table position (x, y)."""
        L = self.lighting
        spot = np.exp(-((x - L.spot_xy[0]) ** 2 + (y - L.spot_xy[1]) ** 2) / (2 * 0.35**2))
        return shade(rgb, 1.05 * L.gain * (L.ambient + (1 - L.ambient) * spot))

    def _has_item_on_top(self, idx: int) -> bool:
        name = self.items[idx].name
        return any(it.location == name for j, it in enumerate(self.items) if j != idx)

    def _support_at(self, item: Item, x: float, y: float) -> tuple[float, str]:
        """(z, location) where ``item`` comes to rest when released above (x, y)."""
        for rec in self.receptacles:
            if rec.contains(x, y):
                return rec.floor, rec.name
        return 0.0, "table"

    # ------------------------------------------------------------------ low-level mechanics
    def _on_close(self) -> None:
        best, best_key = None, None
        for i, it in enumerate(self.items):
            if i == self.held or self._has_item_on_top(i):
                continue
            d = float(np.hypot(self.ee[0] - it.pos[0], self.ee[1] - it.pos[1]))
            if d > max(0.02, 0.7 * it.radius) or not (it.pos[2] - 0.01 <= self.ee[2] <= it.top + 0.015):
                continue
            key = (-it.top, d)
            if best_key is None or key < best_key:
                best, best_key = i, key
        if best is not None:
            self.held = best
            self._grasp_offset = self.ee - self.items[best].pos
            self.items[best].location = "gripper"
            self._held_prims = None
            self._invalidate_static()

    def _on_open(self) -> None:
        if self.held is None:
            return
        it = self.items[self.held]
        z, loc = self._support_at(it, float(it.pos[0]), float(it.pos[1]))
        it.pos = np.array([it.pos[0], it.pos[1], z])
        it.location = loc
        self.held = None
        self._invalidate_static()

    def _after_motion(self) -> None:
        if self.held is not None:
            pos = self.ee - self._grasp_offset
            pos[2] = max(pos[2], 0.0)
            self.items[self.held].pos = pos

    # ------------------------------------------------------------------ drawing
    def _draw_item(self, img: np.ndarray, it: Item) -> None:
        raise NotImplementedError

    def _footprint(self, it: Item) -> np.ndarray:
        return circle_points(float(it.pos[0]), float(it.pos[1]), 0.0, it.radius, n=12)

    def _shadow_polys(self, items: list[Item]) -> list[np.ndarray]:
        sx, sy = self.lighting.shadow_dir
        polys = []
        for it in items:
            f = self._footprint(it).copy()
            f[:, 0] += sx * (it.top * 0.6)
            f[:, 1] += sy * (it.top * 0.6)
            polys.append(f)
        return polys

    def _draw_scene_static(self, img: np.ndarray) -> None:
        resting = [it for i, it in enumerate(self.items) if i != self.held]
        self._painter.shadow(img, self._shadow_polys(resting))
        # Painter's order: low before high, far (large x) before near.
        for it in sorted(resting, key=lambda it: (round(it.pos[2], 3), -it.pos[0])):
            self._painter.replay(img, self._item_prims(it))

    def _item_prims(self, it: Item) -> Prims:
        """The item's drawing primitives at its current pose (recorded once per pose)."""
        cache: dict[str, tuple[tuple, Prims]] = self._prims_cache  # emptied at every reset
        key = (float(it.pos[0]), float(it.pos[1]), float(it.pos[2]), it.yaw)
        hit = cache.get(it.name)
        if hit is not None and hit[0] == key:
            return hit[1]
        prims = Prims()
        self._painter.record = prims
        try:
            self._draw_item(None, it)  # type: ignore[arg-type]
        finally:
            self._painter.record = None
        cache[it.name] = (key, prims.freeze())
        return cache[it.name][1]

    def _draw_held(self, img: np.ndarray) -> None:
        if self.held is None:
            return
        it = self.items[self.held]
        cached = getattr(self, "_held_prims", None)
        if cached is None or cached[0] != it.name:
            # Record the item's primitives once per grasp, then replay them translated each frame.
            cached = (it.name, it.pos.copy(), self._item_prims(it))
            self._held_prims = cached
        self._painter.replay(img, cached[2], it.pos - cached[1])

    # ------------------------------------------------------------------ skills
    def grasp_height(self, it: Item) -> float:
        """z of the fingertips when grasping ``it``."""
        return float(it.pos[2] + max(0.004, min(0.6 * it.height, it.height - 0.004)))

    def pick_waypoints(self, it: Item) -> list[Waypoint]:
        x, y = float(it.pos[0]), float(it.pos[1])
        gz = self.grasp_height(it)
        return [
            Waypoint(np.array([x, y, self.TRAVEL_Z]), False, "above object"),
            Waypoint(np.array([x, y, gz]), False, "descend"),
            Waypoint(np.array([x, y, gz]), True, "grasp"),
            Waypoint(np.array([x, y, self.TRAVEL_Z]), True, "lift"),
        ]

    def place_waypoints(self, x: float, y: float, rest_z: float) -> list[Waypoint]:
        """Carry the held item above (x, y), lower it until its bottom is just above ``rest_z``, release."""
        assert self.held is not None
        release_z = rest_z + float(self._grasp_offset[2]) + 0.008
        travel = max(self.TRAVEL_Z, release_z + 0.05)  # clear a tall stack
        return [
            Waypoint(np.array([self.ee[0], self.ee[1], travel]), True, "raise"),
            Waypoint(np.array([x, y, travel]), True, "above target"),
            Waypoint(np.array([x, y, release_z]), True, "lower"),
            Waypoint(np.array([x, y, release_z]), False, "release"),
            Waypoint(np.array([x, y, travel]), False, "retreat"),
        ]

    def free_slot(self, rec: Receptacle, exclude: str | None = None) -> tuple[float, float]:
        """The first slot of ``rec`` no resting item occupies."""
        for sx, sy in rec.slots:
            taken = any(
                it.location == rec.name and it.name != exclude and np.hypot(it.pos[0] - sx, it.pos[1] - sy) < 0.03
                for it in self.items
            )
            if not taken:
                return sx, sy
        return rec.centre

    def free_table_spot(self, x: float, y: float, item: Item) -> bool:
        """Whether ``item`` released above (x, y) would land on bare table (no receptacle, no item)."""
        if not (abs(x) < 0.3 and abs(y) < 0.42) or any(r.contains(x, y, -0.03) for r in self.receptacles):
            return False
        return all(
            np.hypot(it.pos[0] - x, it.pos[1] - y) > it.radius + item.radius + 0.01
            for it in self.items
            if it is not item
        )

    def _privileged_extra(self) -> dict[str, Any]:
        objects = {}
        for it in self.items:
            objects[it.name] = {
                "kind": it.kind,
                "colour": it.colour_name,
                "rgb": list(it.rgb),
                "position": [float(v) for v in it.pos],
                "yaw": float(it.yaw),
                "radius": it.radius,
                "height": it.height,
                "location": it.location,
                "pixel": list(self.pixel_of(np.array([it.pos[0], it.pos[1], it.top]))),
            }
        targets = {
            r.name: {
                "kind": r.kind,
                "position": [r.centre[0], r.centre[1], r.floor],
                "size": list(r.size),
                "pixel": list(self.pixel_of(np.array([r.centre[0], r.centre[1], r.floor]))),
            }
            for r in self.receptacles
        }
        return {"objects": objects, "targets": targets, "held": self.held_name()}

    # ------------------------------------------------------------------ receptacle drawing
    def _draw_receptacle(self, img: np.ndarray, r: Receptacle) -> None:
        p: Painter = self._painter
        cx, cy = r.centre
        lx, ly = r.size
        col = self._lit(r.rgb, cx, cy)
        if r.kind == "bin":
            p.box(img, cx, cy, 0.0, lx, ly, r.height, 0.0, shade(col, 0.7), col)
            p.fill(img, rect_points(cx, cy, r.height, lx - 0.02, ly - 0.02), shade(col, 0.45))
        elif r.kind == "rack":
            p.box(img, cx, cy, 0.0, lx, ly, r.height, 0.0, shade(col, 0.7), shade(col, 0.85))
            p.fill(img, rect_points(cx, cy, r.height, lx - 0.014, ly - 0.014), shade(col, 0.6))
            wire = shade(col, 1.15)
            for k in range(1, 7):
                yy = cy - ly / 2 + k * ly / 7
                p.line(img, np.array([cx - lx / 2, yy, r.height]), np.array([cx + lx / 2, yy, r.height]), wire)
        else:  # tray, zone
            p.box(img, cx, cy, 0.0, lx, ly, r.height, 0.0, shade(col, 0.7), col)
            p.fill(img, rect_points(cx, cy, r.height, lx - 0.016, ly - 0.016), shade(col, 0.88))

    def _draw_background_extras(self, img: np.ndarray) -> None:
        self._painter.shadow(
            img,
            [rect_points(r.centre[0] + self.lighting.shadow_dir[0] * r.height, r.centre[1] + self.lighting.shadow_dir[1] * r.height, 0.0, *r.size) for r in self.receptacles],
            0.25,
        )
        for r in sorted(self.receptacles, key=lambda r: -r.centre[0]):
            self._draw_receptacle(img, r)
