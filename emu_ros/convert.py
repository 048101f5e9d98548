"""Conversion between ROS messages and the project's types, with no ROS dependency.

Every function works on any object with the ROS field names: rclpy messages on a robot host and
rosbags dataclasses without ROS. Building messages goes through a ``MessageFactory`` (one for
rclpy, one for a rosbags type store) because the two differ only in their classes and in how
``uint8[]`` data is stored.

Camera frames: ``sensor_msgs/Image`` with rgb8, bgr8, rgba8, bgra8, mono8, mono16 and
``sensor_msgs/CompressedImage`` with JPEG or PNG become an HxWx3 uint8 RGB ``Frame``. Anything
else raises ``FrameError`` naming the problem (the node counts and logs it, never crashes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from emu_guide.types import ActionGoal, DecodeMode, Frame, GoalStatus, Plan, PlanStatus, PlanStep

# encoding -> (channels, bytes per channel)
ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
MAX_SIDE = 16384  # a frame larger than this is a corrupt header, not a camera


class FrameError(ValueError):
    """A camera message that cannot be turned into a frame; the message names the problem."""


# --- time -------------------------------------------------------------------------------------


def stamp_to_float(stamp: Any) -> float:
    """builtin_interfaces/Time -> seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def float_to_sec_nanosec(t: float) -> tuple[int, int]:
    """Seconds -> (sec, nanosec), nanosec in [0, 1e9)."""
    if not math.isfinite(t):
        raise ValueError(f"time must be finite, got {t!r}")
    total_ns = round(t * 1e9)
    return int(total_ns // 1_000_000_000), int(total_ns % 1_000_000_000)


# --- camera messages -> Frame -----------------------------------------------------------------


def _as_bytes_array(data: Any) -> np.ndarray:
    """uint8[] field (bytes, array.array, list, numpy) -> 1-D uint8 array without copying when possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)  # array.array('B')
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> HxWx3 uint8 RGB; raises FrameError for anything it cannot convert.

    Rows may be padded (step > width * bytes per pixel). mono16 keeps its 8 most significant bits
    (full-range scaling; a fixed rule, so two frames of one scene convert alike).
    """
    encoding = str(msg.encoding).lower()
    if encoding not in ENCODINGS:
        raise FrameError(f"unsupported image encoding {msg.encoding!r}; expected one of {sorted(ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise FrameError(f"empty image: {width}x{height}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise FrameError(f"image {width}x{height} exceeds the {MAX_SIDE} px limit per side")
    channels, depth = ENCODINGS[encoding]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise FrameError(f"step {step} < width {width} x {channels * depth} bytes per pixel ({encoding})")
    data = _as_bytes_array(msg.data)
    if data.size == 0:
        raise FrameError("image data is empty")
    if data.size != step * height:
        raise FrameError(f"data size {data.size} != step {step} x height {height} = {step * height}")
    rows = data.reshape(height, step)[:, :row_bytes]
    if depth == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        mono16 = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
        pixels = (mono16 >> 8).astype(np.uint8)[:, :, None]
    else:
        pixels = rows.reshape(height, width, channels)
    if encoding in ("mono8", "mono16"):
        rgb = np.repeat(pixels, 3, axis=2)
    elif encoding in ("bgr8", "bgra8"):
        rgb = pixels[:, :, 2::-1]
    else:  # rgb8, rgba8
        rgb = pixels[:, :, :3]
    return np.ascontiguousarray(rgb)


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG or PNG) -> HxWx3 uint8 RGB; FrameError otherwise."""
    import cv2  # opencv is a core dependency; imported here to keep this module light to import

    fmt = str(msg.format).lower()
    if not any(name in fmt for name in COMPRESSED_FORMATS):
        raise FrameError(f"unsupported compressed format {msg.format!r}; expected jpeg or png")
    data = _as_bytes_array(msg.data)
    if data.size == 0:
        raise FrameError("compressed image data is empty")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)  # BGR, or None when the bytes are not an image
    if decoded is None or decoded.ndim != 3 or decoded.size == 0:
        raise FrameError(f"compressed image ({msg.format!r}, {data.size} bytes) could not be decoded")
    return np.ascontiguousarray(decoded[:, :, ::-1])


def frame_from_image(msg: Any) -> Frame:
    return Frame(image_to_rgb(msg), stamp=stamp_to_float(msg.header.stamp), frame_id=str(msg.header.frame_id))


def frame_from_compressed(msg: Any) -> Frame:
    return Frame(compressed_to_rgb(msg), stamp=stamp_to_float(msg.header.stamp), frame_id=str(msg.header.frame_id))


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """HxWx3 RGB -> JPEG or PNG bytes (for CompressedImage publishers and tests)."""
    import cv2

    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ValueError(f"unsupported compressed format {fmt!r}; expected jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


# --- our types -> messages --------------------------------------------------------------------


@dataclass
class MessageFactory:
    """Message classes by full type name plus how to fill a ``uint8[]`` field.

    ``cls("sensor_msgs/msg/Image")`` returns the class; ``to_uint8_field(array)`` returns what that
    class accepts for ``data`` (numpy for rosbags, bytes for rclpy).
    """

    cls: Callable[[str], Any]
    to_uint8_field: Callable[[np.ndarray], Any]

    def time(self, t: float) -> Any:
        sec, nanosec = float_to_sec_nanosec(t)
        return self.cls("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)

    def header(self, stamp: float, frame_id: str) -> Any:
        return self.cls("std_msgs/msg/Header")(stamp=self.time(stamp), frame_id=frame_id)


def rosbags_factory(typestore: Any) -> MessageFactory:
    """Factory over a rosbags type store (with our types registered: ``interfaces.typestore()``)."""
    return MessageFactory(cls=lambda name: typestore.types[name], to_uint8_field=lambda a: np.ascontiguousarray(a, np.uint8).reshape(-1))


def rclpy_factory() -> MessageFactory:
    """Factory over the generated rclpy message modules (needs a ROS environment)."""
    import importlib

    def cls(name: str) -> Any:
        pkg, kind, msg_name = name.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), msg_name)

    return MessageFactory(cls=cls, to_uint8_field=lambda a: np.ascontiguousarray(a, np.uint8).tobytes())


def image_msg(factory: MessageFactory, rgb: np.ndarray, stamp: float = 0.0, frame_id: str = "camera") -> Any:
    """HxWx3 uint8 RGB -> sensor_msgs/Image (rgb8)."""
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    return factory.cls("sensor_msgs/msg/Image")(
        header=factory.header(stamp, frame_id),
        height=h,
        width=w,
        encoding="rgb8",
        is_bigendian=0,
        step=w * 3,
        data=factory.to_uint8_field(rgb),
    )


def compressed_msg(factory: MessageFactory, rgb: np.ndarray, stamp: float = 0.0, frame_id: str = "camera", fmt: str = "jpeg") -> Any:
    return factory.cls("sensor_msgs/msg/CompressedImage")(
        header=factory.header(stamp, frame_id),
        format=fmt,
        data=factory.to_uint8_field(np.frombuffer(encode_compressed(rgb, fmt), np.uint8)),
    )


def empty_image_msg(factory: MessageFactory, stamp: float = 0.0, frame_id: str = "") -> Any:
    return factory.cls("sensor_msgs/msg/Image")(
        header=factory.header(stamp, frame_id),
        height=0,
        width=0,
        encoding="",
        is_bigendian=0,
        step=0,
        data=factory.to_uint8_field(np.zeros(0, np.uint8)),
    )


def action_goal_msg(factory: MessageFactory, goal: ActionGoal | None, stamp: float | None = None) -> Any:
    """ActionGoal -> emu_guidance/msg/ActionGoal. ``None`` gives an empty goal (verb "")."""
    Pose = factory.cls("geometry_msgs/msg/Pose")
    Point = factory.cls("geometry_msgs/msg/Point")
    Quaternion = factory.cls("geometry_msgs/msg/Quaternion")
    if goal is None:
        return factory.cls("emu_guidance/msg/ActionGoal")(
            header=factory.header(0.0 if stamp is None else stamp, ""),
            goal_id="", step_index=0, verb="", object="", target="", has_target_pose=False,
            target_pose=Pose(position=Point(x=0.0, y=0.0, z=0.0), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
            gripper="", status="", confidence=0.0, reason="",
        )  # fmt: skip
    x, y, z = goal.target_pose if goal.target_pose is not None else (0.0, 0.0, 0.0)
    return factory.cls("emu_guidance/msg/ActionGoal")(
        header=factory.header(goal.stamp if stamp is None else stamp, goal.frame_id),
        goal_id=goal.goal_id,
        step_index=int(goal.step_index),
        verb=goal.verb,
        object=goal.object,
        target=goal.target or "",
        has_target_pose=goal.target_pose is not None,
        target_pose=Pose(position=Point(x=float(x), y=float(y), z=float(z)), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
        gripper=goal.gripper or "",
        status=GoalStatus(goal.status).value,
        confidence=float(goal.confidence),
        reason=goal.reason,
    )


def plan_step_msg(factory: MessageFactory, step: PlanStep, stamp: float = 0.0, frame_id: str = "camera") -> Any:
    """PlanStep -> emu_guidance/msg/PlanStep (subgoal image as rgb8; empty when there is none)."""
    if step.subgoal_image is not None:
        image = image_msg(factory, step.subgoal_image, stamp, frame_id)
    else:
        image = empty_image_msg(factory, stamp, frame_id)
    latency = step.timings_ms.get("total", sum(step.timings_ms.values()))
    return factory.cls("emu_guidance/msg/PlanStep")(
        index=int(step.index),
        sentence=step.text,
        subgoal_image=image,
        action_goal=action_goal_msg(factory, step.goal, stamp if step.goal is None else None),
        text_confidence=float(step.text_confidence),
        image_confidence=float(step.image_confidence),
        decode_mode=DecodeMode(step.decode_mode).value,
        latency_ms=float(latency),
        is_final=bool(step.is_final),
    )


def plan_msg(factory: MessageFactory, plan: Plan) -> Any:
    """Plan -> emu_guidance/msg/Plan (header copied from the source frame's stamp and frame id)."""
    return factory.cls("emu_guidance/msg/Plan")(
        header=factory.header(plan.stamp, plan.frame_id),
        instruction=plan.instruction,
        steps=[plan_step_msg(factory, s, plan.stamp, plan.frame_id) for s in plan.steps],
        model_id=plan.model_id,
        status=PlanStatus(plan.status).value,
        error=plan.error,
    )


# --- messages -> our types (clients, bag readers, tests) --------------------------------------


def action_goal_from_msg(msg: Any) -> ActionGoal | None:
    """emu_guidance/msg/ActionGoal -> ActionGoal; None for an empty goal (verb "")."""
    if not msg.verb:
        return None
    p = msg.target_pose.position
    return ActionGoal(
        verb=msg.verb,
        object=msg.object,
        target=msg.target or None,
        target_pose=(p.x, p.y, p.z) if msg.has_target_pose else None,
        gripper=msg.gripper or None,
        step_index=int(msg.step_index),
        frame_id=msg.header.frame_id,
        stamp=stamp_to_float(msg.header.stamp),
        goal_id=msg.goal_id,
        status=GoalStatus(msg.status) if msg.status else GoalStatus.OK,
        confidence=float(msg.confidence),
        reason=msg.reason,
    )


def plan_step_from_msg(msg: Any) -> PlanStep:
    image = image_to_rgb(msg.subgoal_image) if int(msg.subgoal_image.height) > 0 else None
    return PlanStep(
        index=int(msg.index),
        text=msg.sentence,
        subgoal_image=image,
        goal=action_goal_from_msg(msg.action_goal),
        text_confidence=float(msg.text_confidence),
        image_confidence=float(msg.image_confidence),
        decode_mode=DecodeMode.parse(msg.decode_mode),
        timings_ms={"total": float(msg.latency_ms)},
        is_final=bool(msg.is_final),
    )


def plan_from_msg(msg: Any) -> Plan:
    return Plan(
        instruction=msg.instruction,
        steps=[plan_step_from_msg(s) for s in msg.steps],
        model_id=msg.model_id,
        status=PlanStatus(msg.status),
        frame_id=msg.header.frame_id,
        stamp=stamp_to_float(msg.header.stamp),
        error=msg.error,
    )


def objects_in_view_msg(factory: MessageFactory, known: list[str], names: list[str], stamp: float, frame_id: str) -> Any:
    """What a detector saw -> emu_guidance/ObjectsInView (stamp: the camera frame it ran on)."""
    return factory.cls("emu_guidance/msg/ObjectsInView")(
        header=factory.header(stamp, frame_id), known=list(known), names=list(names)
    )


def objects_in_view_from_msg(msg: Any) -> Any:
    """emu_guidance/ObjectsInView -> planner.grounded.ObjectsInView; ValueError names what is wrong."""
    from planner.grounded import ObjectsInView

    def clean(names: Any, what: str) -> tuple[str, ...]:
        out = tuple(" ".join(str(n).lower().split()) for n in names)
        if not all(out):
            raise ValueError(f"ObjectsInView: an empty name in {what}")
        return out

    return ObjectsInView(stamp_to_float(msg.header.stamp), clean(msg.known, "known"), clean(msg.names, "names"))
