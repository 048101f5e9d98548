import math

import cv2
import numpy as np
import pytest

from emu_guide.types import CameraModel
from model_runtime.image_metrics import find_colour_blobs, object_position_error, psnr

RED, BLUE, GREEN = (220, 30, 30), (30, 60, 220), (40, 200, 60)


def scene(objects, size=96, shade=1.0):
    """Grey table with filled discs: objects = [(colour, (u, v), radius)]."""
    img = np.full((size, size, 3), 150, np.uint8)
    for colour, (u, v), r in objects:
        c = tuple(int(min(255, x * shade)) for x in colour)
        cv2.circle(img, (u, v), r, c, -1)
    return img


def top_down_camera(size=96, height=1.0, f=100.0):
    # Camera at z=height looking straight down: camera z -> world -z, camera x -> world x, camera y -> world -y.
    pose = np.eye(4)
    pose[:3, :3] = np.diag([1.0, -1.0, -1.0])
    pose[2, 3] = height
    return CameraModel(width=size, height=size, fx=f, fy=f, cx=size / 2, cy=size / 2, world_from_camera=pose)


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2), abs=1e-9)  # MSE 1 -> 48.13 dB
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a)


def test_blobs_are_found_by_hue_despite_shading():
    img = scene([(RED, (20, 30), 6), (BLUE, (60, 60), 8)], shade=0.7)
    blobs = find_colour_blobs(img)
    assert len(blobs) == 2
    blue, red = blobs  # largest first
    assert (blue.u, blue.v) == pytest.approx((60, 60), abs=0.5) and (red.u, red.v) == pytest.approx((20, 30), abs=0.5)
    assert abs(red.hue - 0) < 3 or abs(red.hue - 180) < 3
    # Two touching objects of different hue stay separate.
    touching = find_colour_blobs(scene([(RED, (40, 40), 8), (GREEN, (54, 40), 8)]))
    assert len(touching) == 2


def test_position_error_pixels_and_metres():
    target = scene([(RED, (20, 30), 6), (BLUE, (60, 60), 8), (GREEN, (70, 20), 5)])
    pred = scene([(RED, (23, 34), 6), (BLUE, (60, 60), 8), (GREEN, (70, 20), 5)], shade=0.9)
    err = object_position_error(pred, target)
    assert err.matched == 3 and err.missing == []
    assert sorted(err.per_object_px.values()) == pytest.approx([0, 0, 5], abs=0.3)
    assert err.mean_px == pytest.approx(5 / 3, abs=0.1) and err.mean_m is None
    # Top-down camera 1 m above the table, f = 100 px: 5 px = 5 cm.
    err_m = object_position_error(pred, target, camera=top_down_camera())
    assert err_m.mean_m == pytest.approx(0.05 / 3, abs=0.002)
    # A missing object is reported, not averaged in.
    gone = object_position_error(scene([(RED, (20, 30), 6), (BLUE, (60, 60), 8)]), target)
    assert gone.matched == 2 and len(gone.missing) == 1 and gone.missing[0].startswith("hue")
    assert gone.num_objects == 3
    with pytest.raises(ValueError, match="camera is 64x64"):
        object_position_error(pred, target, camera=top_down_camera(size=64))


def test_custom_detector_matches_by_name():
    target = scene([(RED, (20, 30), 6)])

    def detector(img):
        b = find_colour_blobs(img)
        return {"red cup": (b[0].u, b[0].v)} if b else {}

    err = object_position_error(scene([(RED, (26, 38), 6)]), target, detector=detector)
    assert err.per_object_px["red cup"] == pytest.approx(10, abs=0.3)
    empty = object_position_error(np.full_like(target, 150), target, detector=detector)
    assert empty.missing == ["red cup"] and math.isnan(empty.mean_px)


def test_max_match_distance_turns_far_matches_into_missing():
    target = scene([(RED, (20, 30), 6)])
    far = scene([(RED, (70, 70), 6)])
    assert object_position_error(far, target).matched == 1
    gated = object_position_error(far, target, max_match_px=16)
    assert gated.matched == 0 and len(gated.missing) == 1
    near = object_position_error(scene([(RED, (24, 33), 6)]), target, max_match_px=16)
    assert near.matched == 1 and near.mean_px == pytest.approx(5, abs=0.3)
