"""Camera and plan message conversion through real rosbags CDR, with types built from our msg/ files."""

from __future__ import annotations

import numpy as np
import pytest

from emu_guide.types import ActionGoal, DecodeMode, Frame, GoalStatus, Plan, PlanStatus, PlanStep
from emu_ros import convert, interfaces


@pytest.fixture(scope="module")
def ts():
    return interfaces.typestore()


@pytest.fixture(scope="module")
def factory(ts):
    return convert.rosbags_factory(ts)


def _cdr(ts, msg):
    """Serialize with rosbags and decode again: what a subscriber or bag reader would see."""
    raw = ts.serialize_cdr(msg, msg.__msgtype__)
    assert bytes(raw[:4]) == b"\x00\x01\x00\x00"  # plain little-endian CDR encapsulation
    return ts.deserialize_cdr(raw, msg.__msgtype__)


def _image(ts, encoding, h, w, step, data, bigendian=0):
    T = ts.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=12, nanosec=500_000_000), frame_id="cam")
    return T["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=encoding, is_bigendian=bigendian,
                                      step=step, data=np.frombuffer(bytes(data), np.uint8))  # fmt: skip


RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("encoding", "pixels", "expected"),
    [
        ("rgb8", RGB, RGB),
        ("bgr8", RGB[:, :, ::-1], RGB),
        ("rgba8", np.dstack([RGB, np.full((5, 7), 9, np.uint8)]), RGB),
        ("bgra8", np.dstack([RGB[:, :, ::-1], np.full((5, 7), 9, np.uint8)]), RGB),
        ("mono8", RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2)),
    ],
)
def test_every_8bit_encoding_converts_to_rgb(ts, encoding, pixels, expected):
    pixels = np.ascontiguousarray(pixels)
    step = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg = _cdr(ts, _image(ts, encoding, 5, 7, step, pixels.tobytes()))
    frame = convert.frame_from_image(msg)
    np.testing.assert_array_equal(frame.image, expected)
    assert frame.stamp == pytest.approx(12.5) and frame.frame_id == "cam"


@pytest.mark.parametrize("bigendian", [0, 1])
def test_mono16_keeps_the_high_byte_in_either_endianness(ts, bigendian):
    values = np.array([[0, 255, 256, 65535], [4660, 32768, 1, 43981]], dtype=np.uint16)
    raw = values.astype(">u2" if bigendian else "<u2").tobytes()
    rgb = convert.image_to_rgb(_cdr(ts, _image(ts, "mono16", 2, 4, 8, raw, bigendian)))
    np.testing.assert_array_equal(rgb[:, :, 0], (values >> 8).astype(np.uint8))
    assert rgb.shape == (2, 4, 3)


def test_padded_rows_are_cropped(ts):
    padded = np.zeros((5, 7 * 3 + 11), np.uint8)
    padded[:, : 7 * 3] = RGB.reshape(5, -1)
    padded[:, 7 * 3 :] = 77  # padding bytes must not leak into the image
    rgb = convert.image_to_rgb(_cdr(ts, _image(ts, "rgb8", 5, 7, padded.shape[1], padded.tobytes())))
    np.testing.assert_array_equal(rgb, RGB)


@pytest.mark.parametrize(
    ("encoding", "h", "w", "step", "nbytes", "match"),
    [
        ("yuv422", 5, 7, 14, 70, "unsupported image encoding"),
        ("32FC1", 5, 7, 28, 140, "unsupported image encoding"),
        ("rgb8", 5, 7, 21, 104, "data size 104 != step 21 x height 5"),
        ("rgb8", 5, 7, 20, 100, "step 20 < width 7"),
        ("rgb8", 0, 7, 21, 0, "empty image"),
        ("rgb8", 5, 7, 21, 0, "image data is empty"),
        ("mono16", 2, 3, 6, 11, "data size 11"),
    ],
)
def test_bad_images_raise_frame_error_naming_the_problem(ts, encoding, h, w, step, nbytes, match):
    msg = _cdr(ts, _image(ts, encoding, h, w, step, bytes(nbytes)))
    with pytest.raises(convert.FrameError, match=match):
        convert.frame_from_image(msg)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "rgb8; jpeg compressed bgr8"])
def test_compressed_jpeg_and_png(ts, factory, fmt):
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[:, :, 0] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    smooth[:, :, 1] = 128
    codec = "png" if "png" in fmt else "jpeg"
    msg = convert.compressed_msg(factory, smooth, 3.0, "cam", codec)
    msg.format = fmt
    rgb = convert.compressed_to_rgb(_cdr(ts, msg))
    if codec == "png":
        np.testing.assert_array_equal(rgb, smooth)  # lossless
    else:
        assert np.abs(rgb.astype(int) - smooth).mean() < 3.0  # lossy, but the same picture


@pytest.mark.parametrize(("fmt", "data", "match"), [("tiff", b"II*\x00", "unsupported compressed format"),
                                                    ("jpeg", b"", "empty"), ("jpeg", b"not a jpeg at all", "could not be decoded")])  # fmt: skip
def test_bad_compressed_images_raise(ts, fmt, data, match):
    T = ts.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
    msg = T["sensor_msgs/msg/CompressedImage"](header=header, format=fmt, data=np.frombuffer(data, np.uint8))
    with pytest.raises(convert.FrameError, match=match):
        convert.frame_from_compressed(_cdr(ts, msg))


def test_image_msg_round_trip(ts, factory):
    msg = _cdr(ts, convert.image_msg(factory, RGB, 7.25, "wrist"))
    assert (msg.encoding, msg.step, msg.height, msg.width) == ("rgb8", 21, 5, 7)
    frame = convert.frame_from_image(msg)
    np.testing.assert_array_equal(frame.image, RGB)
    assert (frame.stamp, frame.frame_id) == (7.25, "wrist")


def _plan() -> Plan:
    goal = ActionGoal("place", "red cup", target="rack", target_pose=(0.1, -0.2, 0.05), gripper="open", step_index=1,
                      goal_id="g1", stamp=5.5, status=GoalStatus.OK, confidence=0.75)  # fmt: skip
    unknown = ActionGoal("done", "", step_index=2, status=GoalStatus.UNKNOWN, confidence=0.0, reason="no verb", goal_id="g2")
    steps = [
        PlanStep(0, "pick up the red cup", subgoal_image=RGB, text_confidence=0.9, image_confidence=0.6,
                 decode_mode=DecodeMode.DIDA, timings_ms={"text": 3.0, "image": 7.0, "total": 10.5}),  # fmt: skip
        PlanStep(1, "put the red cup in the rack", goal=goal, decode_mode=DecodeMode.AR, timings_ms={"total": 4.0}),
        PlanStep(2, "do the thing", goal=unknown, decode_mode=DecodeMode.ORACLE, timings_ms={"total": 1.0}),
        PlanStep(3, "Done.", is_final=True, timings_ms={"total": 0.5}),
    ]
    return Plan("tidy up", steps, model_id="oracle:test", status=PlanStatus.SUCCEEDED, frame_id="cam", stamp=5.5)


def test_plan_round_trip_through_cdr_keeps_every_value(ts, factory):
    plan = _plan()
    back = convert.plan_from_msg(_cdr(ts, convert.plan_msg(factory, plan)))
    assert (back.instruction, back.model_id, back.status, back.frame_id, back.stamp, back.error) == (
        "tidy up", "oracle:test", PlanStatus.SUCCEEDED, "cam", 5.5, "")  # fmt: skip
    assert [s.text for s in back.steps] == [s.text for s in plan.steps]
    assert [s.decode_mode for s in back.steps] == [DecodeMode.DIDA, DecodeMode.AR, DecodeMode.ORACLE, DecodeMode.DIDA]
    np.testing.assert_array_equal(back.steps[0].subgoal_image, RGB)
    assert back.steps[1].subgoal_image is None and back.steps[0].goal is None
    assert back.steps[0].timings_ms["total"] == pytest.approx(10.5)
    assert back.steps[0].text_confidence == pytest.approx(0.9) and back.steps[0].image_confidence == pytest.approx(0.6)
    g = back.steps[1].goal
    assert (g.verb, g.object, g.target, g.gripper, g.step_index, g.goal_id) == ("place", "red cup", "rack", "open", 1, "g1")
    assert g.target_pose == pytest.approx((0.1, -0.2, 0.05)) and g.confidence == pytest.approx(0.75)
    assert back.steps[2].goal.status == GoalStatus.UNKNOWN and back.steps[2].goal.reason == "no verb"
    assert back.steps[3].is_final and not back.steps[2].is_final


def test_action_parts_and_step_result_serialize(ts, factory):
    T = ts.types
    images = [convert.image_msg(factory, RGB, 1.0, "cam")]
    goal = T["emu_guidance/action/Guide_Goal"](instruction="sort", images=images, mode=1, max_steps=3, decode_mode="",
                                               decode_steps=0, guidance_scale=-1.0)  # fmt: skip
    back = _cdr(ts, goal)
    assert back.mode == T["emu_guidance/action/Guide_Goal"].MODE_CONTINUOUS == 1
    np.testing.assert_array_equal(convert.frame_from_image(back.images[0]).image, RGB)
    step = convert.plan_step_msg(factory, _plan().steps[1])
    fb = _cdr(ts, T["emu_guidance/action/Guide_Feedback"](step=step, image_pending=True, steps_done=2, gate_rejections=1))
    assert convert.plan_step_from_msg(fb.step).goal.object == "red cup" and fb.gate_rejections == 1 and fb.image_pending
    res = T["emu_guidance/msg/StepResult"](header=factory.header(2.0, "cam"), goal_id="g1", step_index=1, success=False,
                                           reason="dropped", duration_s=1.5, task_done=False)  # fmt: skip
    assert _cdr(ts, res).reason == "dropped"


def test_time_conversion():
    assert convert.float_to_sec_nanosec(1.5) == (1, 500_000_000)
    assert convert.float_to_sec_nanosec(-0.25) == (-1, 750_000_000)
    with pytest.raises(ValueError, match="finite"):
        convert.float_to_sec_nanosec(float("nan"))


def test_frame_validation_catches_what_conversion_cannot(ts):
    with pytest.raises(ValueError):
        Frame(np.zeros((2, 2), np.uint8))
