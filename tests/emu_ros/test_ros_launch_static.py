"""Launch files and YAML checked without launch_ros (not installable here): every parameter they
set is declared by the node it targets, with the declared type; executables and node names exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from emu_ros import node_parts

ROOT = Path(__file__).resolve().parents[2]
DECLARED = {
    "guidance_node": {n: s.default for n, s in node_parts.PARAMETERS.items()},
    "sim_bridge_node": {n: s.default for n, s in node_parts.SIM_BRIDGE_PARAMETERS.items()},
}
LIFECYCLE = {"guidance_node"}  # managed nodes: launched as LifecycleNode, configured and activated
NODE_NAMES = {"guidance_node": "emu_guidance", "sim_bridge_node": "emu_sim_bridge"}


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _node_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("Node", "LifecycleNode")]


def _transitions(tree: ast.AST) -> list[str]:
    """Lifecycle transitions the launch file emits (Transition.TRANSITION_* names), in source order."""
    return [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("TRANSITION_")]


def _type_ok(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, float)  # ROS 2 parameters are strictly typed: 2 is not 2.0
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_nodes_set_only_declared_parameters(path):
    calls = _node_calls(path)
    assert calls, f"{path.name} launches no Node"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    declared_args = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "DeclareLaunchArgument"}
    used_args = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "LaunchConfiguration"}
    assert used_args <= declared_args, f"undeclared launch arguments {used_args - declared_args}"
    for call in calls:
        assert ast.literal_eval(_kw(call, "package")) == "emu_guidance"
        exe = ast.literal_eval(_kw(call, "executable"))
        assert exe in DECLARED and exe in cmake, exe
        # a managed node is launched as a LifecycleNode and brought up: configure, then activate once inactive
        assert (call.func.id == "LifecycleNode") == (exe in LIFECYCLE), f"{path.name}: {exe} launched as {call.func.id}"
        if exe in LIFECYCLE:
            assert _kw(call, "namespace") is not None, f"{path.name}: launch_ros LifecycleNode needs namespace="
            overrides = {ast.literal_eval(k): v for d in _kw(call, "parameters").elts if isinstance(d, ast.Dict)
                         for k, v in zip(d.keys, d.values)}  # fmt: skip
            assert "autostart" in overrides and ast.literal_eval(overrides["autostart"]) is False, \
                f"{path.name}: the launch file drives the lifecycle, so the node must not autostart"
            assert {"TRANSITION_CONFIGURE", "TRANSITION_ACTIVATE"} <= set(_transitions(tree)), path.name
            assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "OnStateTransition" and
                       any(k.arg == "goal_state" and ast.literal_eval(k.value) == "inactive" for k in n.keywords)
                       for n in ast.walk(tree)), f"{path.name}: activate must wait for the inactive state"
            assert "configure" in (ast.get_docstring(tree) or "") and "activate" in ast.get_docstring(tree), \
                f"{path.name}: the docstring must say the node is configured and activated"
        assert ast.literal_eval(_kw(call, "name")) == NODE_NAMES[exe]
        for item in _kw(call, "parameters").elts:
            if isinstance(item, ast.Dict):
                for key in item.keys:
                    assert ast.literal_eval(key) in DECLARED[exe], f"{path.name}: {exe} has no parameter {key.value!r}"
        remaps = _kw(call, "remappings")
        for pair in remaps.elts if remaps is not None else []:
            source = ast.literal_eval(pair.elts[0])
            assert source in {str(v) for v in DECLARED[exe].values()}, f"{path.name}: remaps {source!r}, not a default topic of {exe}"


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_parameters_are_declared_with_their_types(path):
    data = yaml.safe_load(path.read_text())
    by_name = {v: k for k, v in NODE_NAMES.items()}
    for node_name, section in data.items():
        assert node_name in by_name, f"{path.name}: unknown node {node_name!r}"
        declared = DECLARED[by_name[node_name]]
        for key, value in section["ros__parameters"].items():
            assert key in declared, f"{path.name}: {node_name} declares no {key!r}"
            assert _type_ok(declared[key], value), f"{path.name}: {key}={value!r} has the wrong type for default {declared[key]!r}"
            if by_name[node_name] == "guidance_node":
                assert node_parts.validate_parameter(key, value) is None, (key, value)
            else:
                assert node_parts.validate_parameter(key, value, node_parts.SIM_BRIDGE_PARAMETERS) is None, (key, value)


def test_guidance_yaml_covers_every_parameter():
    section = yaml.safe_load((ROOT / "config" / "guidance.yaml").read_text())["emu_guidance"]["ros__parameters"]
    missing = set(node_parts.PARAMETERS) - set(section) - {"sim_env_id", "sim_seed", "autostart"}  # sim-only; launch drives the lifecycle
    assert not missing, missing
    for key, value in section.items():
        assert value == node_parts.PARAMETERS[key].default, f"guidance.yaml {key}={value!r} differs from the node default"


def test_static_check_catches_an_undeclared_parameter(tmp_path):
    bad = (ROOT / "launch" / "guidance.launch.py").read_text().replace('"device": LaunchConfiguration', '"devise": LaunchConfiguration')
    path = tmp_path / "bad.launch.py"
    path.write_text(bad)
    with pytest.raises(AssertionError, match="no parameter 'devise'"):
        test_launch_file_nodes_set_only_declared_parameters(path)


def test_validate_parameter_rules():
    v = node_parts.validate_parameter
    assert v("decode_steps", 8) is None and v("decode_steps", 0) and v("decode_steps", 2.0) and v("decode_steps", True)
    assert v("guidance_scale", 3) is None and v("guidance_scale", -1.0) is None and v("guidance_scale", 101.0) and v("guidance_scale", "3")
    assert v("backend", "oracle") is None and "must be one of" in v("backend", "tensorrt")
    assert v("device", "cuda:1") is None and v("device", "cuda:x")
    assert v("decode_mode", "ar") is None and v("decode_mode", "beam")
    assert v("nope", 1) == "unknown parameter 'nope'"
    assert v("wait_for_step_result", 1)
    assert v("gate_verbs", "pick,place") is None and "comma-separated action verbs" in v("gate_verbs", "pick,stop")
    assert v("gate_verbs", "pick,press_button") is None and v("gate_verbs", "pick,Tele port")
    assert v("gate_verbs", "") and v("gate_workspace", "") is None and v("gate_workspace", "-1,-1,0,1,1,0.5") is None
    assert "min < max" in v("gate_workspace", "1,1,1,0,0,0") and v("gate_workspace", "1,2")
    assert v("gate_max_goal_rate_hz", 0.0) is None and v("gate_max_goal_rate_hz", -1.0)
    sb = node_parts.SIM_BRIDGE_PARAMETERS
    assert v("camera_rate_hz", 10.0, sb) is None and "(0, 1000]" in v("camera_rate_hz", 0.0, sb) and v("seed", -1, sb)


def test_wrong_type_start_up_error_names_the_parameter_and_the_type():
    err = node_parts.type_error("replan_rate_hz", 2, node_parts.PARAMETERS)
    assert err == "parameter 'replan_rate_hz' must be of type double, got 2 (write 2.0)"
    assert node_parts.type_error("max_steps", "ten", node_parts.PARAMETERS) == "parameter 'max_steps' must be of type integer, got 'ten'"
    assert "\n" not in err


def _robot_hosts_section() -> str:
    readme = (ROOT / "README.md").read_text()
    if "## Robot hosts (ROS 2)" not in readme:
        pytest.skip("README.md has no '## Robot hosts (ROS 2)' section yet")
    return readme.split("## Robot hosts (ROS 2)", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("where", ["docs/ros.md", "README.md"])
def test_docs_parameter_and_topic_tables_match_the_node(where):
    doc = (ROOT / where).read_text() if where != "README.md" else _robot_hosts_section()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", doc, flags=re.M))
    for name, spec in node_parts.PARAMETERS.items():
        assert name in rows, f"{where} has no row for parameter {name}"
        default = spec.default if not isinstance(spec.default, bool) else str(spec.default).lower()
        assert rows[name] == str(default), f"{where} says {name} defaults to {rows[name]!r}, the node {default!r}"
    topics = re.findall(r"^\| `([\w/~]+)` \| (?:in|out|action|service) \|", doc, flags=re.M)
    expected = {node_parts.PARAMETERS[p].default for p in ("image_topic", "compressed_topic", "plan_topic",
                "action_goal_topic", "step_result_topic", "objects_topic", "action_name")} | {  # fmt: skip
        "~/frame_stats", "~/subgoal_image", "~/annotated_image", "~/pending_goal", "~/approve_goal", "/diagnostics"}
    assert expected == set(topics), set(topics) ^ expected
