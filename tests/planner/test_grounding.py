"""Grounding: the OpenCV detector on synthetic and real sim frames, reference resolution, pixel -> world."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest

import sim_envs  # noqa: F401
from emu_guide.types import Frame, GoalStatus
from planner.grounding import Appearance, ColorShapeDetector, Detector, Grounder
from planner.parse import Vocabulary, parse
from sim_envs.camera import make_camera
from sim_envs.seeds import HELDOUT_SEEDS

RED, BLUE, GREEN, WHITE = (205, 38, 38), (38, 82, 205), (38, 152, 62), (238, 238, 232)


def _scene(discs: list[tuple[tuple[int, int], int, tuple[int, int, int]]], size: int = 96) -> np.ndarray:
    """A shaded grey 'table' with filled discs ((u, v), radius, rgb)."""
    rng = np.random.default_rng(0)
    img = np.full((size, size, 3), 140, np.float32)
    img *= np.linspace(0.85, 1.1, size)[None, :, None]  # a lighting gradient
    img += rng.normal(0, 2, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for (u, v), r, rgb in discs:
        cv2.circle(img, (u, v), r, tuple(int(c) for c in rgb), -1)
    return img


def test_detector_is_a_detector_and_finds_exact_centres():
    det = ColorShapeDetector({"red cup": Appearance(RED), "blue cup": Appearance(BLUE), "white plate": Appearance(WHITE)})
    assert isinstance(det, Detector)
    img = _scene([((20, 30), 4, RED), ((70, 60), 5, BLUE), ((50, 20), 6, WHITE)])
    for name, (u, v) in (("red cup", (20, 30)), ("blue cup", (70, 60)), ("white plate", (50, 20))):
        d = det.locate(img, name)
        assert d is not None and d.name == name
        assert abs(d.center[0] - u) < 0.5 and abs(d.center[1] - v) < 0.5
        assert d.bbox[0] <= u < d.bbox[2] and d.bbox[1] <= v < d.bbox[3]
    assert det.locate(_scene([((20, 30), 4, RED)]), "blue cup") is None  # absent: None, not a guess
    assert det.detect(img, ["spatula"]) == []  # names it has no appearance for are not detected
    with pytest.raises(KeyError, match="no appearance"):
        det.mask(img, "spatula")


def test_detector_rejects_empty_appearances():
    with pytest.raises(ValueError, match="at least one"):
        ColorShapeDetector({})
    with pytest.raises(ValueError, match="no colour word"):
        ColorShapeDetector.from_names(["fork", "rack"])


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("grab the second cup", "green cup"),  # left to right: red (u=15), green (48), blue (80)
        ("pick up the first cup", "red cup"),
        ("take the last cup", "blue cup"),
        ("grab the cup on the left", "red cup"),
        ("pick up the rightmost cup", "blue cup"),
        ("grab the one on the right", "blue cup"),
        ("pick up the cup in the middle", "green cup"),
    ],
)
def test_ordinals_and_sides_resolved_in_the_image(sentence, expected):
    names = ("red cup", "green cup", "blue cup")
    det = ColorShapeDetector({"red cup": Appearance(RED), "green cup": Appearance(GREEN), "blue cup": Appearance(BLUE)})
    img = _scene([((15, 50), 4, RED), ((48, 45), 4, GREEN), ((80, 55), 4, BLUE)])
    parsed = parse(sentence, Vocabulary(names, ("rack",)))
    assert parsed.obj is not None and parsed.obj.needs_image
    goal, info = Grounder(det, make_camera(96)).ground(parsed, parsed.to_goal(), Frame(img, stamp=2.5), None)
    assert goal.status == GoalStatus.OK and goal.object == expected
    assert info.resolved_from == list(parsed.obj.candidates)
    assert goal.frame_id == "table" and goal.stamp == 2.5 and goal.target_pose is not None


def test_unresolvable_reference_is_ungrounded():
    det = ColorShapeDetector({"red cup": Appearance(RED), "blue cup": Appearance(BLUE)})
    img = _scene([((15, 50), 4, RED)])  # the blue cup is not visible
    parsed = parse("grab the second cup", Vocabulary(("red cup", "blue cup"), ()))
    goal, _ = Grounder(det, make_camera(96)).ground(parsed, parsed.to_goal(), Frame(img), None)
    assert goal.status == GoalStatus.UNGROUNDED and "cannot resolve" in goal.reason
    parsed = parse("pick up the blue cup", Vocabulary(("red cup", "blue cup"), ()))
    strict, _ = Grounder(det, make_camera(96), strict=True).ground(parsed, parsed.to_goal(), Frame(img), None)
    assert strict.status == GoalStatus.UNGROUNDED and "not found" in strict.reason
    lenient, _ = Grounder(det, make_camera(96), strict=False).ground(parsed, parsed.to_goal(), Frame(img), None)
    assert lenient.status == GoalStatus.OK and lenient.confidence == 0.0 and "not found" in lenient.reason


def test_pixel_to_world_on_real_sim_frames():
    """Detected item positions vs the simulator's privileged state, over held-out scenes."""
    env = gym.make("sim_envs/TableClear-v0")
    errors, confident = [], 0
    total = 0
    all_errors = []
    for seed in HELDOUT_SEEDS[:12]:
        env.reset(seed=seed)
        sim = env.unwrapped
        det = ColorShapeDetector.for_env(env)
        grounder = Grounder(det, sim.camera)
        img = sim.render()
        for name, obj in sim.privileged_state()["objects"].items():
            total += 1
            d = det.locate(img, name)
            if d is None:
                all_errors.append(1.0)
                continue
            # the grasp point (cutlery: off the coloured handle, toward the metal head) on the table plane
            x, y, _ = grounder.to_world(d.base or d.center, img.shape, det.height_of(name))
            err = np.hypot(x - obj["position"][0], y - obj["position"][1])
            all_errors.append(err)
            if d.score >= 0.7:  # look-alikes (same colour and size) are flagged by a low score
                confident += 1
                errors.append(err)
    env.close()
    errors, all_errors = np.array(errors), np.array(all_errors)
    assert len(all_errors) == total and np.median(all_errors) < 0.01 and (all_errors < 0.03).mean() >= 0.8
    assert confident >= 0.35 * total
    assert np.median(errors) < 0.01  # metres
    assert (errors < 0.03).mean() >= 0.9


def test_cross_check_sentence_against_subgoal():
    """The predicted subgoal of a pick must show the named object moved; a static one is suspicious."""
    env = gym.make("sim_envs/TableClear-v0")
    env.reset(seed=HELDOUT_SEEDS[0])
    sim = env.unwrapped
    step = sim.ground_truth_plan()[0]
    frame = Frame(sim.render(), stamp=1.0)
    vocab = Vocabulary.from_env(env)
    grounder = Grounder(ColorShapeDetector.for_env(env), sim.camera)
    parsed = parse(step.text, vocab)
    good, info = grounder.ground(parsed, parsed.to_goal(), frame, sim.subgoal_images()[0])
    static, info_static = grounder.ground(parsed, parsed.to_goal(), frame, frame.image)
    env.close()
    assert info.consistency == 1.0 and info_static.consistency < 0.5
    assert good.confidence > static.confidence
    obj = sim.privileged_state()["objects"][step.goal.object]
    assert np.hypot(good.target_pose[0] - obj["position"][0], good.target_pose[1] - obj["position"][1]) < 0.03


def test_destinations_found_including_identical_bins_by_side():
    """Place steps: the destination is located in the frame (SortBlocks' identical bins by their side word)."""
    env = gym.make("sim_envs/SortBlocks-v0")
    hits = wrong = total = 0
    for seed in HELDOUT_SEEDS[:30]:
        env.reset(seed=seed)
        sim = env.unwrapped
        if sim.mode != "sort":
            continue
        vocab = Vocabulary.from_env(env)
        grounder = Grounder(ColorShapeDetector.for_env(env), sim.camera, target_names=vocab.targets)
        frame = Frame(sim.render())
        targets = sim.privileged_state()["targets"]
        for step in sim.ground_truth_plan():
            if step.goal.verb != "place":
                continue
            parsed = parse(step.text, vocab)
            _, info = grounder.ground(parsed, parsed.to_goal(), frame, None)
            total += 1
            u, v = targets[step.goal.target]["pixel"]
            if info.target_pixel is not None:
                near = np.hypot(info.target_pixel[0] - u, info.target_pixel[1] - v) < 4
                hits += near
                wrong += not near
    env.close()
    assert total >= 20 and hits >= 0.75 * total and wrong <= 0.05 * total  # not found beats a wrong bin
