"""What both nodes share and that needs rclpy: declaring the parameters of a ``ParamSpec`` table
(one style; a value of the wrong type or out of range is a one-line ``ParameterError``) and the
``main`` of a node process (rclpy.init, a MultiThreadedExecutor, a clean shutdown on Ctrl-C and
on an external shutdown, exit status 2 on a bad start-up parameter)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)

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


class SubmitOnceExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor that hands each ready callback to its thread pool once.

    rclpy's (Jazzy 7.1) wait loop yields a callback's task again on every pass until a pool
    thread has started it, and each pass submits it again. In the guidance node the pool threads
    wait for the GIL behind the model's step, so the main thread spun: 2,784 passes in 5 s for
    about 200 callbacks (camera and ObjectsInView at 20 Hz), every pass Python work that the model
    step then waited for. Here a task yielded again before it started is not resubmitted; the
    main thread waits (at most ``settle_s``) for a pool thread to start one instead of spinning.
    """

    def __init__(self, num_threads: int | None = None, settle_s: float = 0.005) -> None:
        super().__init__(num_threads=num_threads)
        self._not_started: set[Any] = set()  # submitted tasks no pool thread has started yet
        self._started = threading.Condition()
        self.settle_s = settle_s

    def _run(self, task: Any) -> None:
        with self._started:
            self._not_started.discard(task)
            self._started.notify_all()
        task()

    def _spin_once_impl(self, timeout_sec: float | None = None, wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            task, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._started:
            if task in self._not_started:  # yielded again before a pool thread took it: wait, do not spin
                self._started.wait(self.settle_s)
                return
            self._not_started.add(task)
        self._executor.submit(self._run, task)
        self._futures.append(task)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exceptions


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
        executor = SubmitOnceExecutor(num_threads=num_threads)
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
