"""Frame verification: did the step happen? Judged from the post-step frame alone.

A "perceive" model (model_runtime/prompt.py) says what it sees: the objects on the table with a
coarse cell, and what the gripper holds. After a step is executed the model perceives the new
frame (``GuidanceSession.perceive``: the answer decoded up to the perception marker, then stopped)
and ``judge_perception`` compares that with the step's action goal, generically over verbs:

- pick X: done when the model sees that it holds X;
- place / stack X on T: done when X is no longer held and, where T is a receptacle (not on the
  table), X is no longer on the table; where T lies on the table (an object the model sees, or
  the table itself), X must be seen on the table, in T's column when T is seen (on top of T it
  shows higher in the image, so its row may differ);
- fold X: the perception lists the parts of a cloth still to fold (their flaps are open); done when
  X, seen before the step, is no longer seen and the cloth is not held;
- any other verb (push, open...), or a goal whose object the model perceives neither before
  nor after the step: perception cannot tell.

A model with a step verifier (``step_verifier/`` in its directory, model_runtime/step_verifier.py)
is asked directly instead: between the frame the step was planned on and the new frame, did this
step happen (``GuidanceSession.check``: the verifier's probability)? When the model also perceives
(a scene perceiver, model_runtime/scene_perceiver.py, or a "perceive" LM), its perception is a
second reading (``decide_by_both``): on a pick a scene perceiver that is sure whether the asked
object is in the gripper overrules it (a wrong pick judged as the asked one is the verifier's one
confusion), and a fold or a stack it reads done is done.

Where perception cannot tell (a model without the format; a perception that does not parse; a
model trained before cloth parts were perceived) the verifier falls back to the pixel test,
``monitor.subgoal_progress`` (the new frame against the predicted subgoal image), and says so.
Nothing here reads simulator state or knows a scene: the inputs are the goal, two frames and what
the model makes of them.

The post-step perception is also the start of the next step's answer for that frame: the loop
hands it to ``GuidanceSession.next_step(perception=...)``, which teacher-forces it, so each frame
is perceived once (docs/planner.md, "Frame verification").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emu_guide.types import ActionGoal, Frame, PlanStep

__all__ = ["FrameVerdict", "FrameVerifier", "decide_by_both", "describe_perception", "held_probability", "judge_perception", "perception_match",
           "subgoal_progress"]

PICK_VERBS = ("pick",)
PICK_SURE_HELD = 0.5  # the perceiver's P(the asked object is held) from which a pick is done, whatever the verifier says
PICK_SURE_NOT = 0.01  # ... under which it is not done
EITHER_VERBS = ("fold", "stack", "place")  # done when the verifier or the perception says so
PUT_VERBS = ("place", "stack")
FOLD_VERBS = ("fold",)
TABLE_TARGETS = ("table", "")  # a place "on the table" (or a stack's base that stays where it is)


@dataclass
class FrameVerdict:
    """What the post-step frame says about a step."""

    done: bool | None  # None: the frame cannot tell (no perception and no subgoal image)
    by: str  # "perception" | "subgoal" (pixel progress towards the subgoal image) | "none"
    reason: str  # human-readable: what was seen and why that means done / not done
    perception: dict[str, Any] | None = None  # the model's perception of the post-step frame
    perception_text: str = ""  # as the model said it (reused as the next answer's start)
    progress: float | None = None  # subgoal_progress when pixels decided (or were computed)
    perceive_ms: float | None = None  # the perception-only decode of the post-step frame
    p_happened: float | None = None  # models with a step verifier: its probability that the step happened
    check_ms: float | None = None  # that check (one verifier forward over the two frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(name: str | None) -> str:
    return " ".join(str(name or "").lower().split())


def _seen(perception: dict[str, Any] | None) -> dict[str, str | None]:
    """name -> cell of the objects a perception lists on the table."""
    if not perception:
        return {}
    return {_norm(o.get("name")): o.get("cell") for o in perception.get("objects", [])}


def describe_perception(perception: dict[str, Any] | None) -> str:
    """One short line: 'red cup (left back), teal fork (middle front); holding nothing'."""
    if perception is None:
        return "-"
    objs = ", ".join(f"{o['name']} ({o['cell']})" if o.get("cell") else o["name"] for o in perception.get("objects", []))
    return f"{objs or 'nothing'}; holding {perception.get('holding') or 'nothing'}"


def _aliases(name: str, perceived: set[str], step_text: str) -> set[str]:
    """The perceived names that refer to the goal's ``name``: itself, and longer perceived names that
    contain its words and that the step's own sentence uses (the parser resolved "the small orange
    block" of the model's sentence to the scene's "orange block": the model's name for it)."""
    words, text = set(name.split()), f" {_norm(step_text)} "
    return {name} | {n for n in perceived if words and set(n.split()) >= words and f" {n} " in text}


def judge_perception(goal: ActionGoal, after: dict[str, Any] | None,
                     before: dict[str, Any] | None = None, step_text: str = "") -> tuple[bool | None, str]:
    """(done, why) of ``goal`` from the model's perception ``after`` the step (``before``: of the
    frame the step was planned on, the step's own answer; optional). ``step_text``: the step's
    sentence (the model's own names for the objects). ``done`` None: perception cannot tell (the
    caller falls back to pixels)."""
    if after is None:
        return None, "no perception of the new frame"
    verb = goal.verb
    if verb not in PICK_VERBS + PUT_VERBS + FOLD_VERBS:
        return None, f"perception (objects and what is held) does not show whether a {verb!r} happened"
    seen_after, seen_before = _seen(after), _seen(before)
    held_after = _norm(after.get("holding"))
    held_before = _norm(before.get("holding")) if before else ""
    named = {*seen_after, *seen_before, held_after, held_before} - {""}
    obj, target = _norm(goal.object), _norm(goal.target)
    objs, targets = _aliases(obj, named, step_text), _aliases(target, named, step_text) if target else set()
    if not objs & named:
        return None, f"the model perceives no {obj} before or after the step"
    on_table_after = [n for n in objs if n in seen_after]
    where = f" at {seen_after[on_table_after[0]]}" if on_table_after and seen_after[on_table_after[0]] else ""
    if verb in FOLD_VERBS:  # the listed parts are those still to fold
        if held_after:
            return False, f"still holds the {held_after}"
        if on_table_after:
            return False, f"the {obj} is still seen unfolded{where}"
        if not any(n in seen_before for n in objs):
            return None, f"the model did not see the {obj} unfolded before the step"
        return True, f"the {obj} is no longer seen unfolded"
    if verb in PICK_VERBS:
        if held_after in objs:
            return True, f"sees it holds the {obj}"
        holds = f"holds the {held_after}" if held_after else "holds nothing"
        still = f"; the {obj} is still on the table{where}" if on_table_after else ""
        return False, f"{holds}, not the {obj}{still}"
    # place / stack X on T
    if held_after in objs:
        return False, f"still holds the {obj}"
    target_seen = [n for n in targets if n in seen_after or n in seen_before]
    if target not in TABLE_TARGETS and not target_seen:  # a receptacle: X leaves the table
        if on_table_after:
            return False, f"the {obj} is on the table{where}, not in the {target}"
        return True, f"the {obj} is neither held nor on the table (put in the {target})"
    if not on_table_after:
        return False, f"the {obj} is neither held nor seen on the table (expected on the {target or 'table'})"
    o_cell = seen_after[on_table_after[0]]
    t_cell = next((seen_after[n] for n in target_seen if seen_after.get(n)), None)
    # On top of T the object shows higher in the image (it may cross the back/front border), so only
    # the column must agree.
    if t_cell and o_cell and t_cell.split()[0] != o_cell.split()[0]:
        return False, f"the {obj} is at {o_cell}, the {target} at {t_cell}: not on it"
    on = f"on the {target}" if target not in TABLE_TARGETS else "on the table"
    return True, f"the {obj} is released and seen {on}{where}"


def decide_by_both(check_done: bool, verb: str, p_held: float | None, perception_done: bool | None = None) -> bool:
    """The step verifier's decision, with the perception's say where it is the better judge:

    - a pick where the scene perceiver is sure either way whether the asked object is in the
      gripper (``p_held``, ``held_probability``): at least ``PICK_SURE_HELD`` it was picked, under
      ``PICK_SURE_NOT`` it was not (another object, or nothing, in the gripper). Which object a pick
      took is the verifier's one confusion (it calls a wrong pick done);
    - a fold, a stack or a place the perception reads done (``perception_done``) is done: each
      judge misses some steps the other sees (a fold whose part the arm half hides, a place the
      verifier doubts while the object is neither held nor on the table).

    Chosen on held-out seeds 50-59 (session 15, ``bench/verify_frames.py --seed-offset 50``; the
    closed loop on seeds 50-69; places since session 18, by the closed loop on seeds 100-149),
    reported on 0-19."""
    if verb in EITHER_VERBS and perception_done:
        return True
    if verb in PICK_VERBS and p_held is not None:
        if p_held >= PICK_SURE_HELD:
            return True
        if p_held < PICK_SURE_NOT:
            return False
    return check_done


def held_probability(perceived: dict[str, Any] | None, name: str) -> float | None:
    """How likely the perception says ``name`` is in the gripper (a scene perceiver's
    ``held_candidates``; a name outside them gets 0). None where the perception has no such
    probabilities (a perception read as text by the LM)."""
    candidates = (perceived or {}).get("held_candidates")
    if candidates is None:
        return None
    want = _norm(name)
    return float(sum(p for n, p in candidates if _norm(n) == want))


def perception_match(perceived: dict[str, Any] | None, truth: dict[str, Any] | None) -> dict[str, Any] | None:
    """How a perception compares with the ground truth (evaluation only): missed and extra names,
    wrong cells, whether the held object is right, and ``exact``. None without both."""
    if perceived is None or truth is None:
        return None
    p, t = _seen(perceived), _seen(truth)
    missed = sorted(set(t) - set(p))
    extra = sorted(set(p) - set(t))
    wrong_cell = sorted(n for n in set(p) & set(t) if p[n] != t[n])
    holding_ok = _norm(perceived.get("holding")) == _norm(truth.get("holding"))
    return {"missed": missed, "extra": extra, "wrong_cell": wrong_cell, "holding_ok": holding_ok,
            "exact": not (missed or extra or wrong_cell) and holding_ok}


def _resize_like(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if image.shape == shape:
        return image
    import cv2

    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def subgoal_progress(
    before: np.ndarray,
    after: np.ndarray,
    subgoal: np.ndarray,
    change_threshold: int = 40,
    blur_sigma: float = 1.0,
) -> float:
    """How far ``after`` went from ``before`` towards ``subgoal`` (0..1; images HxWx3 uint8).

    Among the pixels the subgoal says will change, the fraction now closer to the subgoal than to
    ``before``, minus half the share of unpredicted changes (relative to the predicted area).
    A subgoal predicting no change at all scores by whether nothing changed. All three images are
    smoothed alike first (``blur_sigma`` px) so that a model's softer subgoal image does not
    "predict" a change at every edge in the scene.
    """
    subgoal = _resize_like(subgoal, after.shape)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} frames differ in shape")
    if blur_sigma > 0:
        import cv2

        before, after, subgoal = (cv2.GaussianBlur(x, (0, 0), blur_sigma) for x in (before, after, subgoal))
    b = before.astype(np.int16)
    a = after.astype(np.int16)
    s = subgoal.astype(np.int16)
    predicted = np.abs(s - b).max(axis=2) > change_threshold  # (H, W) where the subgoal differs
    happened = np.abs(a - b).max(axis=2) > change_threshold
    n_pred = int(predicted.sum())
    if n_pred < 4:
        return float(1.0 - min(1.0, happened.sum() / max(16, happened.size * 0.01)))
    to_goal = np.abs(a - s).sum(axis=2)
    to_before = np.abs(a - b).sum(axis=2)
    moved = (to_goal < to_before) & predicted
    unexpected = happened & ~predicted
    score = moved.sum() / n_pred - 0.5 * min(1.0, unexpected.sum() / n_pred)
    return float(max(0.0, min(1.0, score)))


class FrameVerifier:
    """Judges a step from its frames: the model's step verifier, else its perception of the
    post-step frame, else pixel progress.

    ``perceive(frame) -> model_runtime.backends.base.Perceived`` (None: the model has no
    perception); ``check(before, after, step_text) -> model_runtime.backends.base.StepCheck``
    (None: the model has no step verifier); ``progress_threshold`` / ``change_threshold`` as in
    ``MonitorConfig``.
    """

    def __init__(self, perceive: Callable[[Frame], Any] | None, progress_threshold: float = 0.5,
                 change_threshold: int = 40, check: Callable[[Frame, Frame, str], Any] | None = None) -> None:
        self.perceive = perceive
        self.check = check
        self.progress_threshold = progress_threshold
        self.change_threshold = change_threshold

    def __call__(self, step: PlanStep, goal: ActionGoal, before: Frame, after: Frame) -> FrameVerdict:
        perceived, text, ms, why_not = None, "", None, "the model does not perceive (plain answer format)"
        if self.perceive is not None:
            t0 = time.perf_counter()
            seen = self.perceive(after)
            ms = (time.perf_counter() - t0) * 1e3
            perceived, text = seen.perception, seen.text
            why_not = f"the model's perception does not parse ({seen.error})" if perceived is None else ""
        if self.check is not None and step.text:
            judged = self.check(before, after, step.text)
            said = "happened" if judged.happened else "did not happen"
            why = f"the step verifier: the step {said} (p {judged.p_happened:.2f})"
            if judged.unknown_words:
                why += f" (words it never saw in training: {', '.join(judged.unknown_words)})"
            done = judged.happened
            if perceived is not None:  # a second reading; on a pick, a fold or a stack it may overrule
                p_done, p_why = judge_perception(goal, perceived, step.perception, step.text)
                if p_done is not None:
                    why += f"; its perception reads {'done' if p_done else 'not done'}: {p_why}"
                p_held = held_probability(perceived, goal.object)
                done = decide_by_both(judged.happened, goal.verb, p_held, p_done)
                if done != judged.happened:
                    why += (f" (the perception overrules: P(the {goal.object} is held) {p_held:.3f})"
                            if p_held is not None and goal.verb in PICK_VERBS else " (the perception overrules)")
            return FrameVerdict(done, "check", why, perceived, text, None, ms, judged.p_happened, judged.ms)
        if perceived is not None:
            done, why = judge_perception(goal, perceived, step.perception, step.text)
            if done is not None:
                return FrameVerdict(done, "perception", why, perceived, text, None, ms)
            why_not = f"perception cannot tell: {why}"
        verdict = self.by_pixels(step.subgoal_image, before, after)
        verdict.reason = f"{why_not}; {verdict.reason}"
        verdict.perception, verdict.perception_text, verdict.perceive_ms = perceived, text, ms
        return verdict

    def by_pixels(self, subgoal: np.ndarray | None, before: Frame, after: Frame) -> FrameVerdict:
        """The fallback: ``subgoal_progress`` of the new frame towards the predicted subgoal image."""
        if subgoal is None:
            return FrameVerdict(None, "none", "no subgoal image to compare the new frame with")
        p = subgoal_progress(before.image, after.image, subgoal, self.change_threshold)
        done = p >= self.progress_threshold
        cmp = ">=" if done else "<"
        return FrameVerdict(done, "subgoal", f"frame vs predicted subgoal: progress {p:.2f} {cmp} "
                            f"{self.progress_threshold}", progress=p)
