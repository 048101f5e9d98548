"""TableClear: put six household items away, each into the receptacle where it belongs."""

from __future__ import annotations

import numpy as np

from emu_guide.types import ActionGoal, PlanStep
from sim_envs.base import SkillError, Waypoint
from sim_envs.render import TABLE_BASE, circle_points, rect_points, shade
from sim_envs.rigid import PALETTE, Item, Receptacle, RigidTabletopEnv, grid_slots, sample_positions

# kind -> (receptacle it belongs in, footprint radius m, height m)
KINDS: dict[str, tuple[str, float, float]] = {
    "cup": ("rack", 0.03, 0.07),
    "plate": ("rack", 0.052, 0.012),
    "bowl": ("rack", 0.045, 0.035),
    "fork": ("tray", 0.07, 0.008),
    "spoon": ("tray", 0.07, 0.008),
    "knife": ("tray", 0.07, 0.008),
    "napkin": ("bin", 0.05, 0.004),
    "can": ("bin", 0.026, 0.09),
}
RECEPTACLES = ("rack", "bin", "tray")
_RECEPTACLE_LOOK = {  # kind -> (base colour, wall height, floor height)
    "rack": ((176, 180, 190), 0.016, 0.016),
    "bin": ((62, 70, 84), 0.05, 0.012),
    "tray": ((150, 112, 72), 0.012, 0.01),
}
_METAL = (204, 204, 210)
NUM_ITEMS = 6

INSTRUCTIONS = (
    "clear the table",
    "clear the table and put everything where it belongs",
    "tidy up the table",
    "put the dishes in the rack, the cutlery in the tray and the rest in the bin",
    "clean up: every item goes to its place",
    "please put all the items on the table away",
)


class TableClearEnv(RigidTabletopEnv):
    """TableClear: six items (cups, plates, bowls, cutlery, napkins, cans) go into rack / tray / bin.

    ## Description
    Each episode samples six items of random kinds and colours (names "<colour> <kind>", unique
    in the episode) at random positions, and the three receptacles in random order along the far
    edge. Dishes (cup, plate, bowl) go in the rack, cutlery (fork, spoon, knife) in the tray,
    napkins and cans in the bin. The plan picks and places the items nearest the camera first:
    12 steps ("pick up the red cup", "put the red cup in the rack", ...).

    See :class:`sim_envs.base.TabletopEnv` for spaces, rewards and episode end.
    """

    task_name = "table_clear"
    verbs = ("pick", "place")

    def _sample_task(self, rng: np.random.Generator) -> None:
        order = list(RECEPTACLES)
        rng.shuffle(order)
        self.receptacles = []
        for name, y in zip(order, (-0.27, 0.0, 0.27)):
            base, wall, floor = _RECEPTACLE_LOOK[name]
            centre = (float(0.235 + rng.uniform(-0.015, 0.015)), float(y + rng.uniform(-0.015, 0.015)))
            size = (0.15, 0.22)
            rgb = shade(base, float(rng.uniform(0.85, 1.15)))
            self.receptacles.append(Receptacle(name, name, centre, size, wall, floor, rgb, grid_slots(centre, size, 2, 3)))
        # One item per receptacle at least, the rest of any kind.
        kinds = [str(rng.choice([k for k, v in KINDS.items() if v[0] == r])) for r in RECEPTACLES]
        kinds += [str(rng.choice(list(KINDS))) for _ in range(NUM_ITEMS - len(kinds))]
        rng.shuffle(kinds)
        table_rgb = np.asarray(TABLE_BASE[self.table_style])
        colours = [c for c, rgb in PALETTE.items() if np.abs(np.asarray(rgb) - table_rgb).sum() > 120]
        used: set[str] = set()
        radii = [KINDS[k][1] for k in kinds]
        positions = sample_positions(rng, radii, (-0.28, 0.11), (-0.33, 0.33))
        self.items = []
        for kind, xy in zip(kinds, positions):
            choices = [c for c in colours if f"{c} {kind}" not in used]
            colour = str(rng.choice(choices))
            used.add(f"{colour} {kind}")
            _, radius, height = KINDS[kind]
            pos = np.array([xy[0], xy[1], 0.0])
            self.items.append(
                Item(f"{colour} {kind}", kind, colour, PALETTE[colour], pos, float(rng.uniform(-np.pi, np.pi)), radius, height, home=pos.copy())
            )
        self.held = None
        self._grasp_offset = np.zeros(3)
        self.instruction = str(INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))])

    def target_names(self) -> list[str]:
        return [r.name for r in self.receptacles]

    def name_vocabulary(self) -> list[str]:
        return [f"{colour} {kind}" for colour in PALETTE for kind in KINDS]

    def destination(self, name: str) -> str:
        """The receptacle ``name`` belongs in."""
        return KINDS[self.item(name).kind][0]

    def _build_plan(self) -> list[PlanStep]:
        steps: list[PlanStep] = []
        for it in sorted(self.items, key=lambda it: (it.pos[0], it.pos[1])):
            dest = self.destination(it.name)
            for text, goal in (
                (f"pick up the {it.name}", ActionGoal("pick", it.name)),
                (f"put the {it.name} in the {dest}", ActionGoal("place", it.name, target=dest)),
            ):
                goal.step_index = len(steps)
                steps.append(PlanStep(index=len(steps), text=text, goal=goal))
        return steps

    # ------------------------------------------------------------------ checks and skills
    def _validate(self, verb: str, obj: str, target: str) -> None:
        if verb == "place" and target not in self.target_names():
            raise SkillError(f"place needs a target; got {target or None!r}; valid targets: {', '.join(self.target_names())}")

    def _in_place(self, it: Item, target: str) -> bool:
        return it.location == target

    def _check(self, verb: str, obj: str, target: str) -> bool:
        it = self.item(obj)
        if verb == "pick":
            return self.held_name() == obj or self._in_place(it, self.destination(obj))
        return self._in_place(it, target)

    def _final_ok(self) -> bool:
        return self.held is None and all(self._in_place(it, self.destination(it.name)) for it in self.items)

    def _waypoints(self, verb: str, obj: str, target: str) -> list[Waypoint] | str:
        it = self.item(obj)
        if verb == "pick":
            if self.held is not None:
                held = self.held_name()
                return [] if held == obj else f"already holding the {held}; place it first"
            return self.pick_waypoints(it)
        if self.held_name() != obj:
            return f"not holding the {obj}; pick it up first"
        rec = self.receptacle(target)
        x, y = self.free_slot(rec, exclude=obj)
        return self.place_waypoints(x, y, rec.floor)

    # ------------------------------------------------------------------ drawing
    def _footprint(self, it: Item) -> np.ndarray:
        x, y = float(it.pos[0]), float(it.pos[1])
        if it.kind in ("fork", "spoon", "knife"):
            return rect_points(x, y, 0.0, 0.13, 0.02, it.yaw)
        if it.kind == "napkin":
            return rect_points(x, y, 0.0, 0.075, 0.075, it.yaw)
        return circle_points(x, y, 0.0, it.radius, n=12)

    def _draw_item(self, img: np.ndarray, it: Item) -> None:
        p = self._painter
        x, y, z = (float(v) for v in it.pos)
        c = self._lit(it.rgb, x, y)
        metal = self._lit(_METAL, x, y)
        ax, ay = np.cos(it.yaw), np.sin(it.yaw)  # the long axis of cutlery, cup handle direction
        if it.kind == "cup":
            p.box(img, x + ax * 0.034, y + ay * 0.034, z + 0.018, 0.016, 0.008, 0.035, it.yaw, shade(c, 0.6), shade(c, 0.8))
            p.cylinder(img, x, y, z, it.height, it.radius, shade(c, 0.72), c)
            p.fill(img, circle_points(x, y, z + it.height, it.radius * 0.78), shade(c, 0.42))
        elif it.kind == "plate":
            p.cylinder(img, x, y, z, it.height, it.radius, shade(c, 0.7), c)
            p.fill(img, circle_points(x, y, z + it.height, it.radius * 0.62), shade(c, 0.88))
        elif it.kind == "bowl":
            p.cylinder(img, x, y, z, it.height, it.radius, shade(c, 0.7), c)
            p.fill(img, circle_points(x, y, z + it.height, it.radius * 0.82), shade(c, 0.55))
            p.fill(img, circle_points(x, y, z + 0.25 * it.height, it.radius * 0.4), shade(c, 0.68))
        elif it.kind == "can":
            p.cylinder(img, x, y, z, it.height, it.radius, shade(c, 0.85), metal)
            p.fill(img, circle_points(x, y, z + it.height, it.radius * 0.45), c)
        elif it.kind == "napkin":
            p.box(img, x, y, z, 0.075, 0.075, it.height, it.yaw, shade(c, 0.8), c)
            corners = rect_points(x, y, z + it.height + 1e-3, 0.075, 0.075, it.yaw)
            p.line(img, corners[0], corners[2], shade(c, 0.72))
        else:  # cutlery: coloured handle toward -axis, metal head toward +axis
            h = z + it.height
            p.box(img, x - ax * 0.03, y - ay * 0.03, z, 0.075, 0.016, it.height, it.yaw, shade(c, 0.7), c)
            hx, hy = x + ax * 0.038, y + ay * 0.038
            if it.kind == "fork":
                p.box(img, hx, hy, z, 0.05, 0.024, it.height * 0.6, it.yaw, shade(metal, 0.7), metal)
                for s in (-0.004, 0.004):
                    a = np.array([hx + ax * 0.005 - ay * s, hy + ay * 0.005 + ax * s, h])
                    b = np.array([hx + ax * 0.025 - ay * s, hy + ay * 0.025 + ax * s, h])
                    p.line(img, a, b, shade(metal, 0.55))
            elif it.kind == "spoon":
                pts = circle_points(0.0, 0.0, h, 1.0, n=16)
                loc = np.stack([pts[:, 0] * 0.026, pts[:, 1] * 0.017], axis=1)
                rot = np.array([[ax, ay], [-ay, ax]])
                xy = loc @ rot + np.array([hx + ax * 0.006, hy + ay * 0.006])
                centre = xy.mean(axis=0)
                p.fill(img, np.concatenate([xy, pts[:, 2:]], axis=1), metal)
                p.fill(img, np.concatenate([centre + 0.6 * (xy - centre), pts[:, 2:]], axis=1), shade(metal, 0.82))  # the bowl
            else:
                p.box(img, hx + ax * 0.005, hy + ay * 0.005, z, 0.07, 0.018, it.height * 0.5, it.yaw, shade(metal, 0.7), metal)

