"""Shared plain data types used by every package (sim_envs, model_runtime, planner, emu_ros, finetune_embodied).

This module imports only numpy and the standard library: it must stay importable on any host,
ROS or not, GPU or not. Everything here is a dataclass with validation in ``__post_init__`` so a
bad value is reported where it is created, not deep inside a consumer.

Coordinate conventions (ROS REP 103 style): metres, right-handed; the ``table`` frame has its
origin at the table centre, x forward (away from the camera), y left, z up.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

__all__ = [
    "ActionGoal",
    "CameraModel",
    "DecodeMode",
    "Frame",
    "GoalStatus",
    "Plan",
    "PlanStatus",
    "PlanStep",
    "StepResult",
    "VERBS",
    "validate_rgb_image",
]

# The built-in verbs an ActionGoal carries. Our sim skill controllers implement all of them; a
# robot's executor may support a subset and reports the rest as unsupported. An environment may
# declare verbs of its own (``skill_verbs()``, emu_guide/env_protocol.py): one lowercase word each.
VERBS = ("pick", "place", "fold", "stack", "push", "open", "close", "done")
_VERB_WORD = re.compile(r"[a-z][a-z_]*")


def validate_rgb_image(image: object, what: str = "image") -> np.ndarray:
    """Return ``image`` as a contiguous HxWx3 uint8 array or raise ValueError naming the problem."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what}: expected shape (H, W, 3) RGB, got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what}: empty image {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected dtype uint8, got {image.dtype}")
    return np.ascontiguousarray(image)


class DecodeMode(str, Enum):
    """How a subgoal image is decoded."""

    DIDA = "dida"  # parallel discrete-diffusion refinement of the whole image block
    AR = "ar"  # one token per forward pass (the baseline)
    ORACLE = "oracle"  # rendered by the simulator from privileged state (no model)

    @classmethod
    def parse(cls, value: str | DecodeMode) -> DecodeMode:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown decode mode {value!r}; expected one of: {allowed}") from None


class PlanStatus(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class GoalStatus(str, Enum):
    """What the planner made of a step sentence."""

    OK = "ok"
    UNKNOWN = "unknown"  # sentence could not be parsed: never guessed, the monitor decides
    UNGROUNDED = "ungrounded"  # parsed, but the named object was not found in the frame


@dataclass
class Frame:
    """One camera frame: HxWx3 uint8 RGB, a stamp in seconds and the ROS frame id."""

    image: np.ndarray
    stamp: float = 0.0
    frame_id: str = "camera"

    def __post_init__(self) -> None:
        self.image = validate_rgb_image(self.image, "Frame.image")
        if not math.isfinite(self.stamp):
            raise ValueError(f"Frame.stamp must be finite, got {self.stamp!r}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class CameraModel:
    """Pinhole camera with its pose in the ``table`` frame.

    ``world_from_camera`` is a 4x4 homogeneous transform; the camera looks along its +z axis,
    image x to the right, image y down (OpenCV convention).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_from_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    frame_id: str = "camera"
    world_frame_id: str = "table"

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"CameraModel: size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"CameraModel: focal lengths must be positive, got {self.fx}, {self.fy}")
        pose = np.asarray(self.world_from_camera, dtype=np.float64)
        if pose.shape != (4, 4):
            raise ValueError(f"CameraModel.world_from_camera must be 4x4, got {pose.shape}")
        self.world_from_camera = pose

    @property
    def intrinsics(self) -> np.ndarray:
        """3x3 K matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 2) pixel coordinates (u, v)."""
        pts = np.atleast_2d(np.asarray(points_world, dtype=np.float64))
        cam_from_world = np.linalg.inv(self.world_from_camera)
        homo = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
        cam = (cam_from_world @ homo.T).T[:, :3]  # (N, 3)
        z = np.where(np.abs(cam[:, 2]) < 1e-9, 1e-9, cam[:, 2])
        u = self.fx * cam[:, 0] / z + self.cx
        v = self.fy * cam[:, 1] / z + self.cy
        return np.stack([u, v], axis=1)

    def pixel_to_plane(self, u: float, v: float, plane_z: float = 0.0) -> np.ndarray:
        """Intersect the ray through pixel (u, v) with the world plane z = plane_z -> (x, y, z)."""
        ray_cam = np.array([(u - self.cx) / self.fx, (v - self.cy) / self.fy, 1.0])
        rot = self.world_from_camera[:3, :3]
        origin = self.world_from_camera[:3, 3]
        ray = rot @ ray_cam
        if abs(ray[2]) < 1e-9:
            raise ValueError(f"pixel ({u}, {v}) looks parallel to the plane z={plane_z}")
        t = (plane_z - origin[2]) / ray[2]
        if t <= 0:
            raise ValueError(f"pixel ({u}, {v}) does not look at the plane z={plane_z}")
        return origin + t * ray


@dataclass
class ActionGoal:
    """A structured goal the robot's own controllers execute (one plan step)."""

    verb: str
    object: str  # the thing acted on, e.g. "red cup", "left sleeve"
    target: str | None = None  # where it goes: a zone/receptacle name ("rack") or a part ("centre")
    target_pose: tuple[float, float, float] | None = None  # metres in ``frame_id``
    gripper: str | None = None  # "open" | "close" | None (skill decides)
    step_index: int = 0
    frame_id: str = "table"
    stamp: float = 0.0
    goal_id: str = ""
    status: GoalStatus = GoalStatus.OK
    confidence: float = 1.0
    reason: str = ""  # why a goal is UNKNOWN / UNGROUNDED, for the monitor's record

    def __post_init__(self) -> None:
        if self.verb not in VERBS and not (isinstance(self.verb, str) and _VERB_WORD.fullmatch(self.verb)):
            raise ValueError(f"ActionGoal.verb {self.verb!r} is not one of {VERBS} nor an environment's own verb "
                             "(one lowercase word)")
        if self.gripper not in (None, "open", "close"):
            raise ValueError(f"ActionGoal.gripper must be 'open', 'close' or None, got {self.gripper!r}")
        if self.target_pose is not None:
            pose = tuple(float(x) for x in self.target_pose)
            if len(pose) != 3 or not all(math.isfinite(x) for x in pose):
                raise ValueError(f"ActionGoal.target_pose must be 3 finite numbers, got {self.target_pose!r}")
            self.target_pose = pose  # type: ignore[assignment]
        self.status = GoalStatus(self.status)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return d


@dataclass
class PlanStep:
    """One step of a plan: a sentence plus the predicted subgoal image (what done looks like)."""

    index: int
    text: str
    subgoal_image: np.ndarray | None = None  # HxWx3 uint8 RGB
    subgoal_tokens: np.ndarray | None = None  # (h, w) int visual codes, when a model made it
    goal: ActionGoal | None = None
    text_confidence: float = 1.0  # mean max-probability of the generated text tokens
    image_confidence: float = 1.0  # mean max-probability of the committed image tokens
    decode_mode: DecodeMode = DecodeMode.DIDA
    timings_ms: dict[str, float] = field(default_factory=dict)  # "text", "image", "total", ...
    is_final: bool = False  # the model says the task is complete (no action)
    # What the model saw in the frame before this step (answer format "perceive"):
    # {"objects": [{"name", "colour", "kind", "cell"}...], "holding": name | None}; None otherwise.
    perception: dict | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"PlanStep.index must be >= 0, got {self.index}")
        if self.subgoal_image is not None:
            self.subgoal_image = validate_rgb_image(self.subgoal_image, "PlanStep.subgoal_image")
        self.decode_mode = DecodeMode.parse(self.decode_mode)


@dataclass
class Plan:
    instruction: str
    steps: list[PlanStep] = field(default_factory=list)
    model_id: str = ""
    status: PlanStatus = PlanStatus.RUNNING
    frame_id: str = "camera"
    stamp: float = 0.0
    error: str = ""

    def __post_init__(self) -> None:
        self.status = PlanStatus(self.status)


@dataclass
class StepResult:
    """What happened when a goal was executed (reported by an executor)."""

    step_index: int
    success: bool
    reason: str = ""
    frames: list[np.ndarray] = field(default_factory=list)  # frames seen while executing
    duration_s: float = 0.0
