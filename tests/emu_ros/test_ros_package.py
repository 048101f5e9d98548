"""The ament package: package.xml (catkin_pkg), every .msg/.action (rosidl_adapter, the real ROS
parser), CMakeLists.txt listing them all, and rosbags agreeing with the same files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from emu_ros import interfaces

ROOT = Path(__file__).resolve().parents[2]


def _rosidl_parser():
    """rosidl_adapter (PyPI ros-rosidl-adapter, the test extra: no ROS install, no .pth bootstrapper)."""
    try:
        from rosidl_adapter import parser
    except ImportError:
        reason = "rosidl_adapter missing: pip install 'ros-rosidl-adapter==4.6.6' (the test extra)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return parser


def test_package_xml_is_a_valid_format3_package():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / "package.xml"))  # parses and validates (raises InvalidPackage)
    pkg.validate()
    assert pkg.name == "emu_guidance" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_cmake"
    deps = {d.name for d in pkg.build_depends + pkg.exec_depends}
    assert {"sensor_msgs", "std_msgs", "geometry_msgs", "builtin_interfaces", "action_msgs", "rclpy"} <= deps
    assert "rosidl_interface_packages" in [g.name for g in pkg.member_of_groups]
    assert "rosidl_default_generators" in {d.name for d in pkg.buildtool_depends}
    # the ROS package must not share a name with a Python package it installs (rosidl_python#141)
    assert not (ROOT / pkg.name / "__init__.py").exists()


def test_catkin_pkg_rejects_a_broken_package_xml(tmp_path):
    from catkin_pkg.package import InvalidPackage, parse_package

    bad = re.sub(r"<maintainer .*?</maintainer>", "", (ROOT / "package.xml").read_text())
    (tmp_path / "package.xml").write_text(bad)
    with pytest.raises(InvalidPackage):
        parse_package(str(tmp_path / "package.xml")).validate()


@pytest.mark.parametrize("name", interfaces.MESSAGES)
def test_every_msg_parses_with_rosidl_adapter(name):
    spec = _rosidl_parser().parse_message_string("emu_guidance", name, (ROOT / "msg" / f"{name}.msg").read_text())
    assert spec.fields, f"{name}.msg has no fields"
    if name in ("Plan", "ActionGoal", "StepResult", "ObjectsInView"):
        assert spec.fields[0].name == "header" and str(spec.fields[0].type) == "std_msgs/Header"


def test_guide_action_parses_with_rosidl_adapter():
    spec = _rosidl_parser().parse_action_string("emu_guidance", "Guide", (ROOT / "action" / "Guide.action").read_text())
    goal = {f.name for f in spec.goal.fields}
    assert {"instruction", "images", "mode", "max_steps", "decode_mode", "decode_steps", "guidance_scale"} <= goal
    assert {f.name for f in spec.result.fields} == {"plan", "status", "error_message"}
    assert {f.name for f in spec.feedback.fields} == {"step", "image_pending", "steps_done", "gate_rejections"}
    assert {c.name for c in spec.goal.constants} == {"MODE_ONE_SHOT", "MODE_CONTINUOUS"}


def test_approve_goal_service_parses_with_rosidl_adapter():
    spec = _rosidl_parser().parse_service_string("emu_guidance", "ApproveGoal", (ROOT / "srv" / "ApproveGoal.srv").read_text())
    assert [f.name for f in spec.request.fields] == ["goal_id", "approve", "reason"]
    assert [f.name for f in spec.response.fields] == ["accepted", "message"]


def test_action_goal_declares_the_stop_verb():
    spec = _rosidl_parser().parse_message_string("emu_guidance", "ActionGoal", (ROOT / "msg" / "ActionGoal.msg").read_text())
    assert {c.name: c.value for c in spec.constants}["VERB_STOP"] == "stop"


def test_rosidl_adapter_rejects_what_rosbags_accepts():
    """Why the real parser is used: rosbags takes a bad field name, rosidl does not."""
    from rosbags.typesys import get_types_from_msg

    parse_message_string = _rosidl_parser().parse_message_string

    bad = "string Sentence\nuint32 index\n"
    get_types_from_msg(bad, "emu_guidance/msg/Bad")  # no complaint
    with pytest.raises(Exception, match="invalid field name"):
        parse_message_string("emu_guidance", "Bad", bad)


def test_cmakelists_generates_every_interface_file():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"((?:msg|action|srv)/\w+\.(?:msg|action|srv))"', cmake))
    on_disk = {p.relative_to(ROOT).as_posix() for p in interfaces.interface_files()}
    on_disk |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "msg").glob("*.msg")}
    on_disk |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "action").glob("*.action")}
    on_disk |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "srv").glob("*.srv")}
    assert listed == on_disk
    assert "project(emu_guidance)" in cmake and "ament_package()" in cmake
    for node in ("guidance_node", "sim_bridge_node"):
        assert node in cmake and (ROOT / "emu_ros" / f"{node}.py").is_file()


def test_rosbags_types_match_the_files():
    ts = interfaces.typestore()
    for name, text in interfaces.type_definitions().items():
        fields = [ln.split()[1] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
                  and "=" not in ln.split("#")[0]]  # fmt: skip
        assert list(ts.fielddefs[name][1]) and [f[0] for f in ts.fielddefs[name][1]] == fields, name
