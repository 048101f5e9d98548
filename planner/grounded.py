"""Grounded decoding bookkeeping: which object names the model may use in its next step.

The detector says what it sees; the episode's own confirmed steps say what was already put
away and what is in the gripper. ``NameGrounding`` turns both into ``DecodeOptions.allowed_names``
(docs/planner.md, "Grounded decoding"). The one step loop (``planner.loop``) uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from emu_guide.types import ActionGoal

__all__ = ["NameGrounding", "ObjectsInView"]


@dataclass(frozen=True)
class ObjectsInView:
    """What a detector saw in one camera frame (emu_guidance/ObjectsInView): grounded decoding's input."""

    stamp: float  # the camera frame the detection ran on
    known: tuple[str, ...]  # every name the detector can report (its class list)
    names: tuple[str, ...]  # the ones it sees in that frame

    def __post_init__(self) -> None:
        if not self.known:
            raise ValueError("ObjectsInView: the detector's known names are empty")
        unknown = sorted(set(self.names) - set(self.known))
        if unknown:
            raise ValueError(f"ObjectsInView: names {unknown} are not among the detector's known names")


@dataclass
class NameGrounding:
    """Seen objects, minus those put away by confirmed steps, plus the held object and object targets."""

    known: tuple[str, ...]  # every name the detector can report (its class list)
    targets: tuple[str, ...] = ()  # the scene's targets; those that are known names stay nameable (a tower's blocks)
    held: str | None = None
    put_away: set[str] = field(default_factory=set)
    # Names of a step whose object named nothing in the scene: not offered again until a step is
    # confirmed, so a re-plan names another object instead of rephrasing around the same name
    # ("blue shirt spoon"). Never the held object (the next step places it).
    refused: set[str] = field(default_factory=set)


    def __post_init__(self) -> None:
        self.known = tuple(dict.fromkeys(n.lower().strip() for n in self.known))
        if not self.known or not all(self.known):
            raise ValueError(f"NameGrounding needs non-empty known names, got {self.known!r}")
        self.targets = tuple(t.lower().strip() for t in self.targets)

    def allowed(self, seen: Iterable[str], other_names: Mapping[str, Sequence] | None = None) -> list[str]:
        """The names the next step may mention, given the names the detector sees now.

        ``other_names``: per seen name, the object's next likeliest names, likeliest first (a scene
        perceiver's ``other_names``: ``[name, p]`` pairs). A refused name's object is offered under
        the first of them that is known and neither refused, put away nor offered already: the
        reading, not the object, was wrong (a fork read as a spoon)."""
        free = [n for n in dict.fromkeys(s.lower().strip() for s in seen) if n not in self.put_away]
        held = [self.held] if self.held else []
        targets = [t for t in self.targets if t in self.known]  # receptacles are no object names
        offered = [n for n in dict.fromkeys([*free, *held, *targets]) if n not in self.refused]
        for name in free:
            if name not in self.refused:
                continue
            for other, _ in (other_names or {}).get(name, ()):
                other = other.lower().strip()
                if other in self.known and other not in self.refused and other not in self.put_away and other not in offered:
                    offered.append(other)
                    break
        return offered

    def refuse(self, sentence: str, offered: Iterable[str]) -> list[str]:
        """The object of ``sentence`` named nothing in the scene: the ``offered`` names it mentions,
        but the held one, are not offered again for this step. Returns them."""
        words = f" {' '.join(sentence.lower().split())} "
        named = [n for n in offered if f" {n} " in words and n != self.held]
        self.refused.update(named)
        return named

    def confirm(self, goal: ActionGoal) -> None:
        """A step was confirmed done: track what is in the gripper and what was put away."""
        self.refused.clear()
        name = goal.object.lower().strip()
        if goal.verb == "pick":
            self.held = name
        elif goal.verb in ("place", "stack"):
            self.held = None
            self.put_away.add(name)
        elif goal.verb == "fold":  # a folded part is done with, as a placed object is
            self.put_away.add(name)
