"""What both nodes share and that needs rclpy: declaring the parameters of a ``ParamSpec`` table
(one style; a value of the wrong type or out of range is a one-line ``ParameterError``) and the
``main`` of a node process (rclpy.init, a MultiThreadedExecutor, a clean shutdown on Ctrl-C and
on an external shutdown, exit status 2 on a bad start-up parameter)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from emu_ros.node_parts import ParamSpec, type_error, validate_parameter


class ParameterError(ValueError):
    """A start-up parameter the node cannot run with: one line naming it and what it must be."""


def declare_parameters(node: Any, specs: dict[str, ParamSpec]) -> None:
    """Declare every parameter of ``specs`` on ``node`` and check the start-up values."""
    for name, spec in specs.items():
        try:
            node.declare_parameter(name, spec.default, ParameterDescriptor(description=spec.description, read_only=spec.read_only))
        except InvalidParameterTypeException:  # e.g. -p replan_rate_hz:=2 (an integer for a double)
            given = getattr(node, "_parameter_overrides", {}).get(name)
            raise ParameterError(type_error(name, given.value if given is not None else "?", specs)) from None
        except ParameterException as exc:
            raise ParameterError(f"parameter {name!r}: {exc}") from None
    for name in specs:  # values from YAML / the command line are checked like runtime changes
        error = validate_parameter(name, node.get_parameter(name).value, specs)
        if error:
            raise ParameterError(error)


def main_for(make_node: Callable[[], Any], args: list[str] | None, prog: str, num_threads: int = 4) -> int:
    """Run one node until Ctrl-C or shutdown; a bad start-up parameter prints one line, exit 2."""
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except ParameterError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        executor = MultiThreadedExecutor(num_threads=num_threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
