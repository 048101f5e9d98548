"""The fixed RGB camera: a pinhole above and behind the table, looking down at it.

Table frame (emu_guide.types): origin at the table centre, x forward (away from the camera),
y left, z up. The camera sits behind the near edge, so the far edge of the table is at the top
of the image and the robot's left (+y) is on the image's left.
"""

from __future__ import annotations

import numpy as np

from emu_guide.types import CameraModel

EYE = np.array([-0.58, 0.0, 0.80])  # nominal camera position (m)
LOOK_AT = np.array([0.0, 0.0, 0.0])  # nominal point the optical axis hits
FOCAL_PER_PIXEL = 1.4  # fx = FOCAL_PER_PIXEL * width: about 39 degrees horizontal field of view


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """4x4 world_from_camera for a camera at ``eye`` looking at ``target`` (OpenCV axes)."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def make_camera(resolution: int, rng: np.random.Generator | None = None, jitter: bool = True) -> CameraModel:
    """The episode's camera; with ``rng`` and ``jitter`` its pose and focal length vary slightly."""
    eye, target, roll, focal = EYE.copy(), LOOK_AT.copy(), 0.0, FOCAL_PER_PIXEL
    if rng is not None and jitter:
        eye = eye + rng.uniform(-0.012, 0.012, size=3)
        target = target + rng.uniform(-0.01, 0.01, size=3) * np.array([1.0, 1.0, 0.0])
        roll = float(rng.uniform(-np.radians(1.5), np.radians(1.5)))
        focal = focal * float(rng.uniform(0.98, 1.02))
    f = focal * resolution
    return CameraModel(
        width=resolution,
        height=resolution,
        fx=f,
        fy=f,
        cx=(resolution - 1) / 2.0,  # pixel centres at integer coordinates, as cv2 draws
        cy=(resolution - 1) / 2.0,
        world_from_camera=look_at(eye, target, roll),
    )


def projection_matrix(camera: CameraModel) -> np.ndarray:
    """3x4 matrix P = K [R^T | -R^T t] so that pixel ~ P @ (x, y, z, 1)."""
    rot = camera.world_from_camera[:3, :3]
    t = camera.world_from_camera[:3, 3]
    extrinsic = np.concatenate([rot.T, (-rot.T @ t)[:, None]], axis=1)
    return camera.intrinsics @ extrinsic


def table_coordinates(camera: CameraModel, plane_z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) arrays of the table-plane x and y seen by each pixel (vectorised pixel_to_plane)."""
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], axis=-1)
    rays = rays @ camera.world_from_camera[:3, :3].T  # (H, W, 3) in world
    origin = camera.world_from_camera[:3, 3]
    t = (plane_z - origin[2]) / rays[..., 2]
    return origin[0] + t * rays[..., 0], origin[1] + t * rays[..., 1]
