"""Launch files and YAML checked without launch_ros (not installable here): every parameter they
set is declared by the node it targets, with the declared type; executables and node names exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from emu_ros import guidance_node, sim_bridge_node

ROOT = Path(__file__).resolve().parents[2]
DECLARED = {
    "guidance_node": {n: s.default for n, s in guidance_node.PARAMETERS.items()},
    "sim_bridge_node": {n: d for n, (d, _) in sim_bridge_node.PARAMETERS.items()},
}
NODE_NAMES = {"guidance_node": "emu_guidance", "sim_bridge_node": "emu_sim_bridge"}


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _node_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]


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
                assert guidance_node.validate_parameter(key, value) is None, (key, value)


def test_guidance_yaml_covers_every_parameter():
    section = yaml.safe_load((ROOT / "config" / "guidance.yaml").read_text())["emu_guidance"]["ros__parameters"]
    missing = set(guidance_node.PARAMETERS) - set(section) - {"sim_env_id", "sim_seed"}  # sim-only
    assert not missing, missing
    for key, value in section.items():
        assert value == guidance_node.PARAMETERS[key].default, f"guidance.yaml {key}={value!r} differs from the node default"


def test_static_check_catches_an_undeclared_parameter(tmp_path):
    bad = (ROOT / "launch" / "guidance.launch.py").read_text().replace('"device": LaunchConfiguration', '"devise": LaunchConfiguration')
    path = tmp_path / "bad.launch.py"
    path.write_text(bad)
    with pytest.raises(AssertionError, match="no parameter 'devise'"):
        test_launch_file_nodes_set_only_declared_parameters(path)


def test_validate_parameter_rules():
    v = guidance_node.validate_parameter
    assert v("decode_steps", 8) is None and v("decode_steps", 0) and v("decode_steps", 2.0) and v("decode_steps", True)
    assert v("guidance_scale", 3) is None and v("guidance_scale", "3")
    assert v("backend", "oracle") is None and "must be one of" in v("backend", "tensorrt")
    assert v("device", "cuda:1") is None and v("device", "cuda:x")
    assert v("decode_mode", "ar") is None and v("decode_mode", "beam")
    assert v("nope", 1) == "unknown parameter 'nope'"
    assert v("wait_for_step_result", 1)


def _robot_hosts_section() -> str:
    readme = (ROOT / "README.md").read_text()
    if "## Robot hosts (ROS 2)" not in readme:
        pytest.skip("README.md has no '## Robot hosts (ROS 2)' section yet")
    return readme.split("## Robot hosts (ROS 2)", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("where", ["docs/ros.md", "README.md"])
def test_docs_parameter_and_topic_tables_match_the_node(where):
    doc = (ROOT / where).read_text() if where != "README.md" else _robot_hosts_section()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", doc, flags=re.M))
    for name, spec in guidance_node.PARAMETERS.items():
        assert name in rows, f"{where} has no row for parameter {name}"
        default = spec.default if not isinstance(spec.default, bool) else str(spec.default).lower()
        assert rows[name] == str(default), f"{where} says {name} defaults to {rows[name]!r}, the node {default!r}"
    topics = re.findall(r"^\| `([\w/~]+)` \| (?:in|out|action) \|", doc, flags=re.M)
    expected = {guidance_node.PARAMETERS[p].default for p in ("image_topic", "compressed_topic", "plan_topic",
                "action_goal_topic", "step_result_topic", "objects_topic", "action_name")} | {"~/frame_stats"}  # fmt: skip
    assert expected == set(topics), set(topics) ^ expected
