"""SortBlocks: the instruction, not the scene, decides where each block goes."""

from __future__ import annotations

import numpy as np

from emu_guide.types import ActionGoal, PlanStep
from sim_envs.base import SkillError, Waypoint
from sim_envs.render import rect_points, shade
from sim_envs.rigid import PALETTE, Item, Receptacle, RigidTabletopEnv, grid_slots, sample_positions

BLOCK_SIZES = {"small": 0.04, "big": 0.056}
BLOCK_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple")
BINS = {"left bin": 0.25, "middle bin": 0.0, "right bin": -0.25}  # name -> y (left is +y)

SORT_TEMPLATES = (
    "put the {pairs}",
    "sort the blocks: {pairs}",
    "place the {pairs}",
    "tidy the blocks away: {pairs}",
)
STACK_TEMPLATES = (
    "stack the blocks with the {first} block at the bottom, then {rest}",
    "build a tower: {first} at the bottom, then {rest}",
    "make a stack of the blocks, {first} first, then {rest}",
)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class SortBlocksEnv(RigidTabletopEnv):
    """SortBlocks: coloured blocks sorted into bins or stacked in an order the instruction gives.

    ## Description
    Two modes, drawn per episode. *Sort* (60%): 4-6 blocks of 2-3 colours and as many identical
    bins along the far edge; the instruction maps colours to bins ("put the red blocks in the left
    bin and the blue blocks in the right bin"), the mapping is random, so the image alone does not
    tell the plan. Steps: "pick up the small red block", "put the small red block in the left bin".
    *Stack* (40%): 3-4 blocks of distinct colours; the instruction gives the order from the bottom;
    steps "pick up the red block", "stack the red block on the green block" (verb "stack", target
    the block below). Blocks are named "<colour> block", with "small"/"big" when a colour repeats.

    See :class:`sim_envs.base.TabletopEnv` for spaces, rewards and episode end.
    """

    task_name = "sort_blocks"
    verbs = ("pick", "place", "stack")

    def _sample_task(self, rng: np.random.Generator) -> None:
        self.mode = "sort" if rng.random() < 0.6 else "stack"
        self.held = None
        self._grasp_offset = np.zeros(3)
        self.receptacles = []
        if self.mode == "sort":
            n_bins = 2 if rng.random() < 0.6 else 3
            bin_names = ["left bin", "right bin"] if n_bins == 2 else list(BINS)
            base = shade((88, 92, 104), float(rng.uniform(0.8, 1.2)))
            for name in bin_names:
                centre = (float(0.235 + rng.uniform(-0.01, 0.01)), float(BINS[name] + rng.uniform(-0.015, 0.015)))
                size = (0.15, 0.19)
                self.receptacles.append(Receptacle(name, "bin", centre, size, 0.035, 0.01, base, grid_slots(centre, size, 2, 3)))
            colours = [str(c) for c in rng.choice(BLOCK_COLOURS, size=n_bins, replace=False)]
            counts = [1 + int(rng.random() < 0.6) for _ in colours]
            while sum(counts) < 4:
                counts[int(rng.integers(len(counts)))] = 2
            specs = []
            for colour, n in zip(colours, counts):
                sizes = ["small", "big"] if n == 2 else [str(rng.choice(list(BLOCK_SIZES)))]
                for s in sizes:
                    specs.append((colour, s, f"{s} {colour} block" if n == 2 else f"{colour} block"))
            targets = list(bin_names)
            rng.shuffle(targets)
            self.colour_to_bin = dict(zip(colours, targets))
        else:
            n = int(rng.integers(3, 5))
            colours = [str(c) for c in rng.choice(BLOCK_COLOURS, size=n, replace=False)]
            specs = [(c, str(rng.choice(list(BLOCK_SIZES))), f"{c} block") for c in colours]
            self.colour_to_bin = {}
        order = rng.permutation(len(specs))
        specs = [specs[i] for i in order]
        positions = sample_positions(rng, [BLOCK_SIZES[s] * 0.75 + 0.01 for _, s, _ in specs], (-0.27, 0.1), (-0.3, 0.3))
        self.items = []
        for (colour, size, name), xy in zip(specs, positions):
            pos = np.array([xy[0], xy[1], 0.0])
            yaw = float(rng.uniform(-0.4, 0.4))
            self.items.append(Item(name, "block", colour, PALETTE[colour], pos, yaw, BLOCK_SIZES[size] * 0.75, BLOCK_SIZES[size], home=pos.copy()))
        if self.mode == "sort":
            pairs = [f"{c} blocks in the {b}" for c, b in self.colour_to_bin.items()]
            rng.shuffle(pairs)
            self.instruction = str(SORT_TEMPLATES[int(rng.integers(len(SORT_TEMPLATES)))]).format(pairs=_join(pairs))
            self.stack_order: list[str] = []
        else:
            self.stack_order = [it.name for it in self.items]  # sampled order, bottom first
            rng.shuffle(self.stack_order)
            cols = [self.item(n).colour_name for n in self.stack_order]
            rest = _join(cols[1:-1] + [f"{cols[-1]} on top"])
            self.instruction = str(STACK_TEMPLATES[int(rng.integers(len(STACK_TEMPLATES)))]).format(first=cols[0], rest=rest)

    def name_vocabulary(self) -> list[str]:
        return [f"{size}{colour} block" for colour in BLOCK_COLOURS for size in ("", "small ", "big ")]

    def target_names(self) -> list[str]:
        if self.mode == "sort":
            return [r.name for r in self.receptacles]
        return [it.name for it in self.items]

    def destination(self, name: str) -> tuple[str, str]:
        """(verb, target) of the plan's step that puts block ``name`` in its final place."""
        if self.mode == "sort":
            return "place", self.colour_to_bin[self.item(name).colour_name]
        k = self.stack_order.index(name)
        if k == 0:
            return "stack", ""  # the base block stays where it is
        return "stack", self.stack_order[k - 1]

    def _build_plan(self) -> list[PlanStep]:
        steps: list[PlanStep] = []

        def add(text: str, goal: ActionGoal) -> None:
            goal.step_index = len(steps)
            steps.append(PlanStep(index=len(steps), text=text, goal=goal))

        if self.mode == "sort":
            for it in sorted(self.items, key=lambda it: (it.pos[0], it.pos[1])):
                _, target = self.destination(it.name)
                add(f"pick up the {it.name}", ActionGoal("pick", it.name))
                add(f"put the {it.name} in the {target}", ActionGoal("place", it.name, target=target))
        else:
            for below, name in zip(self.stack_order[:-1], self.stack_order[1:]):
                add(f"pick up the {name}", ActionGoal("pick", name))
                add(f"stack the {name} on the {below}", ActionGoal("stack", name, target=below))
        return steps

    # ------------------------------------------------------------------ mechanics
    def _support_at(self, item: Item, x: float, y: float) -> tuple[float, str]:
        best: tuple[float, str] | None = None
        for it in self.items:
            if it is item or it.location == "gripper":
                continue
            half = it.height / 2 + 0.004
            if abs(x - it.pos[0]) <= half and abs(y - it.pos[1]) <= half and (best is None or it.top > best[0]):
                best = (it.top, it.name)
        if best is not None:
            return best
        return super()._support_at(item, x, y)

    def _validate(self, verb: str, obj: str, target: str) -> None:
        if verb == "pick":
            return
        valid = [t for t in self.target_names() if t != obj]
        if target not in valid:
            raise SkillError(f"{verb} {obj!r} needs a target; got {target or None!r}; valid targets: {', '.join(valid)}")

    def _resting_on(self, it: Item, target: str) -> bool:
        return it.location == target

    def _check(self, verb: str, obj: str, target: str) -> bool:
        it = self.item(obj)
        if verb == "pick":
            dverb, dtarget = self.destination(obj)
            return self.held_name() == obj or (bool(dtarget) and self._check(dverb, obj, dtarget))
        if self.mode == "stack":  # a block on a block counts only if the one below is in its place
            below = target
            if not self._resting_on(it, below):
                return False
            if below in self.stack_order and self.stack_order.index(below) > 0:
                return self._check("stack", below, self.destination(below)[1])
            return self.item(below).location == "table"
        return self._resting_on(it, target)

    def _final_ok(self) -> bool:
        if self.held is not None:
            return False
        for it in self.items:
            verb, target = self.destination(it.name)
            if target and not self._check(verb, it.name, target):
                return False
        return True

    def _waypoints(self, verb: str, obj: str, target: str) -> list[Waypoint] | str:
        it = self.item(obj)
        if verb == "pick":
            if self.held is not None:
                held = self.held_name()
                return [] if held == obj else f"already holding the {held}; put it down first"
            if self._has_item_on_top(self.items.index(it)):
                return f"the {obj} has another block on top of it"
            return self.pick_waypoints(it)
        if self.held_name() != obj:
            return f"not holding the {obj}; pick it up first"
        if self.mode == "sort" or target in BINS:
            rec = self.receptacle(target)
            x, y = self.free_slot(rec, exclude=obj)
            return self.place_waypoints(x, y, rec.floor)
        below = self.item(target)
        return self.place_waypoints(float(below.pos[0]), float(below.pos[1]), below.top)

    # ------------------------------------------------------------------ drawing
    def _footprint(self, it: Item) -> np.ndarray:
        return rect_points(float(it.pos[0]), float(it.pos[1]), 0.0, it.height, it.height, it.yaw)

    def _draw_item(self, img: np.ndarray, it: Item) -> None:
        x, y, z = (float(v) for v in it.pos)
        c = self._lit(it.rgb, x, y)
        s = it.height
        self._painter.box(img, x, y, z, s, s, s, it.yaw, shade(c, 0.68), c)
        self._painter.fill(img, rect_points(x, y, z + s + 1e-4, s * 0.7, s * 0.7, it.yaw), shade(c, 1.08))
