import numpy as np
import pytest

from emu_guide.types import ActionGoal, CameraModel, DecodeMode, Frame, PlanStep


def test_frame_rejects_bad_images():
    Frame(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        Frame(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        Frame(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        Frame(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="numpy array"):
        Frame([[1, 2, 3]])  # type: ignore[arg-type]


def test_action_goal_validation():
    g = ActionGoal("pick", "red cup", target_pose=(1, 2, 3))
    assert g.target_pose == (1.0, 2.0, 3.0)
    assert ActionGoal("press", "button").verb == "press"  # an environment's own verb (skill_verbs)
    for bad in ("Teleport", "pick up", "", "go!", 3):
        with pytest.raises(ValueError, match="verb"):
            ActionGoal(bad, "cup")
    with pytest.raises(ValueError, match="gripper"):
        ActionGoal("pick", "cup", gripper="half")
    with pytest.raises(ValueError, match="finite"):
        ActionGoal("pick", "cup", target_pose=(0, float("nan"), 0))


def test_plan_step_decode_mode():
    assert PlanStep(0, "x", decode_mode="ar").decode_mode is DecodeMode.AR
    with pytest.raises(ValueError, match="unknown decode mode"):
        PlanStep(0, "x", decode_mode="magic")


def test_camera_project_and_back_project_agree():
    # Camera 1 m above the table looking straight down (camera z = -world z).
    pose = np.array([[0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]], dtype=float)
    cam = CameraModel(width=64, height=64, fx=60, fy=60, cx=32, cy=32, world_from_camera=pose)
    pts = np.array([[0.1, -0.2, 0.0], [0.0, 0.0, 0.0], [-0.3, 0.25, 0.0]])
    uv = cam.project(pts)
    assert np.allclose(uv[1], [32, 32])
    for p, (u, v) in zip(pts, uv):
        assert np.allclose(cam.pixel_to_plane(u, v, 0.0), p, atol=1e-9)
