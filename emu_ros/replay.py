"""``emu-guide replay``: guidance over camera frames from a rosbag2, without ROS.

Reads ``sensor_msgs/Image`` / ``CompressedImage`` from a rosbag2 (mcap or sqlite3) with rosbags,
runs a guidance backend on the frames, and writes a new bag with the frames plus our
``emu_guidance/msg/Plan`` and ``emu_guidance/msg/ActionGoal`` messages (types built from our own
``msg/`` files, so ``ros2 bag play`` and rclpy subscribers read them). Sim episodes are recorded
to bags the same way (``record_sim`` / ``--record-sim ENV_ID``).

    emu-guide replay in_bag --instruction "clear the table" --out runs/replay/out_bag --backend torch
    emu-guide replay --record-sim sim_envs/TableClear-v0 --seed 1000 --out runs/bags/table_clear
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu_guide.types import ActionGoal, DecodeMode, Frame, PlanStatus, StepResult
from emu_ros import convert, interfaces
from model_runtime.backends.base import DEFAULT_DIDA_STEPS, DecodeOptions
from planner.executor import ExecutorError, SimExecutor
from planner.loop import GuidanceLoop, LoopConfig, LoopResult
from planner.monitor import MonitorConfig

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
PLAN_TOPIC = "/emu_guidance/plan"
GOAL_TOPIC = "/emu_guidance/action_goal"
RESULT_TOPIC = "/emu_guidance/step_result"
CAMERA_TOPIC = "/camera/image_raw"


@dataclass
class CameraMessage:
    topic: str
    msgtype: str
    timestamp_ns: int  # bag receive time
    raw: bytes  # CDR as stored (copied unchanged into the output bag)
    frame: Frame | None  # None when the message is not a usable frame
    error: str = ""
    qos: tuple = ()  # the input connection's offered QoS profiles (kept in the output bag)


class BagError(ValueError):
    """A bag that cannot be read: one line naming the bag and the problem (never a traceback)."""


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_reader(bag: Path) -> Any:
    """An opened rosbags AnyReader for ``bag``; every failure (missing, not a bag, truncated, random
    bytes, definitions rosbags cannot parse such as service events, an unknown serialization) is a
    BagError with one line."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    if not bag.exists():
        raise BagError(f"bag {bag} does not exist")
    if bag.is_dir() and not (bag / "metadata.yaml").exists() and not any(bag.glob("*.mcap")) and not any(bag.glob("*.db3")):
        raise BagError(f"{bag} is not a rosbag2 bag (no metadata.yaml, .mcap or .db3 inside)")
    try:
        reader = AnyReader([bag], default_typestore=interfaces.typestore())
        reader.open()
    except Exception as exc:  # rosbags raises AnyReaderError, ReaderError, sqlite3/struct/yaml errors...
        raise BagError(f"cannot read bag {bag}: {_one_line(exc)}") from None
    return reader


def _camera_connections(reader: Any, bag: Path, topic: str | None) -> list[Any]:
    conns = [c for c in reader.connections if c.msgtype in IMAGE_TYPES and (topic is None or c.topic == topic)]
    if not conns:
        found = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections}) or "no topics at all"
        want = f"topic {topic!r} of type Image/CompressedImage" if topic else "Image/CompressedImage topic"
        raise BagError(f"bag {bag} has no {want}; it has: {found}")
    for c in conns:
        fmt = getattr(c.ext, "serialization_format", "cdr")
        if fmt != "cdr":
            raise BagError(f"bag {bag}: topic {c.topic} is serialized as {fmt!r}, only 'cdr' can be read")
    return conns


def check_bag(bag: Path, topic: str | None = None) -> int:
    """Open ``bag`` and decode its first camera message (before any model loads); the number of
    camera messages. BagError with one line when the bag cannot be replayed."""
    reader = _open_reader(bag)
    try:
        conns = _camera_connections(reader, Path(bag), topic)
        count = sum(c.msgcount for c in conns)
        if count == 0:
            raise BagError(f"bag {bag} has camera topics {[c.topic for c in conns]} but no messages on them")
        try:
            for conn, _timestamp, raw in reader.messages(connections=conns):
                reader.deserialize(raw, conn.msgtype)
                break
        except Exception as exc:
            raise BagError(f"cannot read bag {bag}: {_one_line(exc)}") from None
        return count
    finally:
        reader.close()


def read_camera(bag: Path, topic: str | None = None) -> Iterator[CameraMessage]:
    """Camera messages of ``bag`` (all Image/CompressedImage topics, or ``topic``) in time order.

    A bag that breaks part-way (a truncated file) raises BagError where it breaks."""
    bag = Path(bag)
    reader = _open_reader(bag)
    try:
        conns = _camera_connections(reader, bag, topic)
        messages = reader.messages(connections=conns)
        while True:
            try:
                item = next(messages, None)
                if item is None:
                    return
                conn, timestamp, raw = item
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # a truncated chunk, a corrupt record: one line, where it broke
                raise BagError(f"cannot read bag {bag}: {_one_line(exc)}") from None
            to_frame = convert.frame_from_image if conn.msgtype.endswith("/Image") else convert.frame_from_compressed
            qos = tuple(getattr(conn.ext, "offered_qos_profiles", ()) or ())
            try:
                yield CameraMessage(conn.topic, conn.msgtype, timestamp, bytes(raw), to_frame(msg), qos=qos)
            except ValueError as exc:
                yield CameraMessage(conn.topic, conn.msgtype, timestamp, bytes(raw), None, str(exc), qos=qos)
    finally:
        reader.close()


def check_out(path: Path, storage: str = "mcap") -> Path:
    """``path`` as an output bag that may be written (before any model loads); ValueError otherwise."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"output bag {path} already exists; choose a new --out")
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be one of ['mcap', 'sqlite3'], got {storage!r}")
    return path


class BagOut:
    """A rosbag2 writer with our types: camera frames, plans, action goals, step results.

    Written under a temporary name beside ``path`` (``.<name>.partial-<pid>``) and renamed to
    ``path`` only when the writing finished (``with`` block left without an exception); on any
    failure the partial bag is removed, so a failed run leaves nothing at ``--out``.
    """

    def __init__(self, path: Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        path = check_out(path, storage)
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ts = interfaces.typestore()
        self.factory = convert.rosbags_factory(self.ts)
        self.path = path
        # <parent>/.<name>.partial-<pid>/<name>: the bag keeps its own name (rosbag2 names its storage
        # files after the bag directory) and moves to ``path`` in one rename when it is complete.
        self._tmp_parent = path.parent / f".{path.name}.partial-{os.getpid()}"
        shutil.rmtree(self._tmp_parent, ignore_errors=True)  # a leftover of a killed run of this very process id
        self._tmp_parent.mkdir()
        self.tmp = self._tmp_parent / path.name
        self.writer = Writer(self.tmp, version=9, storage_plugin=plugins[storage])
        self.writer.open()
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def write_raw(self, topic: str, msgtype: str, timestamp_ns: int, raw: bytes, qos: tuple = ()) -> None:
        if topic not in self._conns:  # the input's QoS profiles travel with its topic (ros2 bag play offers them)
            self._conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts, offered_qos_profiles=list(qos))
        self.writer.write(self._conns[topic], int(timestamp_ns), raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write(self, topic: str, msg: Any, timestamp_ns: int) -> None:
        self.write_raw(topic, msg.__msgtype__, timestamp_ns, self.ts.serialize_cdr(msg, msg.__msgtype__))

    def close(self) -> None:
        """Finish the bag and move it to ``path``."""
        self.writer.close()
        if self.path.exists():
            raise FileExistsError(f"output bag {self.path} appeared while writing; the result stays in {self.tmp}")
        os.replace(self.tmp, self.path)
        self._tmp_parent.rmdir()

    def abort(self) -> None:
        """Drop the partial bag (nothing is left at ``path``)."""
        try:
            self.writer.abort()
        finally:
            shutil.rmtree(self._tmp_parent, ignore_errors=True)

    def __enter__(self) -> BagOut:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class ReplaySummary:
    out: str
    frames: int = 0
    frames_rejected: int = 0
    rejected_reasons: list[str] = field(default_factory=list)
    steps: int = 0
    status: str = PlanStatus.RUNNING.value
    error: str = ""
    sentences: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _loop_config(options: DecodeOptions | None, max_steps: int, frame_size: tuple[int, int] | None = None) -> LoopConfig:
    """A guidance request's budget is its planning calls (``max_steps``), as on the ROS node."""
    return LoopConfig(decode=options or DecodeOptions(), monitor=MonitorConfig.for_request(max_steps),
                      frame_size=frame_size, keep_images=False)


class BagFramesExecutor:
    """Bag replay as the loop's executor: the recording's robot acted between planned frames.

    ``observe`` copies camera messages to the output bag until the next frame that is due (at
    least ``every_s`` bag seconds after the last planned one) and returns it; the end of the bag
    is an ExecutorError (the run fails: the task was not seen done). ``execute`` counts the goal as
    done by the next planned frame, unless ``execute_goal`` (the oracle's sim mirror) runs it and
    reports otherwise.
    """

    name = "bag"

    def __init__(self, messages: Iterator[CameraMessage], writer: BagOut, summary: ReplaySummary, every_s: float,
                 execute_goal: Any = None) -> None:
        self.messages, self.writer, self.summary = messages, writer, summary
        self.every_s = every_s
        self.execute_goal = execute_goal
        self.planned_ns: int | None = None  # bag time of the frame the current step was planned from
        self._results: dict[str, bool] = {}

    def observe(self) -> Frame:
        for msg in self.messages:
            self._copy(msg)
            if msg.frame is None:
                continue
            if self.planned_ns is None or msg.timestamp_ns - self.planned_ns >= self.every_s * 1e9:
                self.planned_ns = msg.timestamp_ns
                return msg.frame
        raise ExecutorError(f"the bag ended after {self.summary.frames} frames before the task was done")

    def execute(self, goal: ActionGoal) -> StepResult:
        result = self.execute_goal(goal) if self.execute_goal is not None else None
        if result is None:
            result = StepResult(goal.step_index, True, reason="assumed done: the recording's robot acted before the next planned frame")
        self._results[goal.goal_id] = bool(result.success)
        return result

    def check(self, goal: ActionGoal) -> bool | None:
        return self._results.get(goal.goal_id)

    def task_done(self) -> bool | None:
        return None

    def drain(self) -> None:
        """Copy the rest of the bag's camera messages (the output holds every input frame)."""
        for msg in self.messages:
            self._copy(msg)

    def _copy(self, msg: CameraMessage) -> None:
        self.writer.write_raw(msg.topic, msg.msgtype, msg.timestamp_ns, msg.raw, msg.qos)
        self.summary.frames += 1
        if msg.frame is None:
            self.summary.frames_rejected += 1
            self.summary.rejected_reasons.append(msg.error)


def replay_bag(
    bag: Path,
    out: Path,
    backend: Any,
    instruction: str,
    options: DecodeOptions | None = None,
    topic: str | None = None,
    every_s: float = 0.0,
    max_steps: int = 20,
    storage: str = "mcap",
    execute_goal: Any = None,
    image_size: tuple[int, int] | None = None,
) -> ReplaySummary:
    """Plan from the frames of ``bag`` through the one step loop (one step per frame at most every ``every_s`` bag seconds).

    All camera messages are copied to ``out`` unchanged; an ActionGoal and a Plan (the plan so far)
    follow each planned frame, stamped with that frame. Each step counts as done by the next planned
    frame (choose ``every_s`` to match the recording's step time); ``execute_goal(goal)`` may
    execute it instead (the oracle's sim mirror) and return a StepResult whose ``success`` decides.
    ``image_size`` (h, w): resize frames to it before the backend (default: the backend's own
    input size). Status as on the ROS node: succeeded when the model says the task is done; failed
    when the step budget is spent, the bag ends first, or the backend errs (the error in the last
    Plan, never a traceback mid-bag).
    """
    config = _loop_config(options, max_steps, image_size)
    summary = ReplaySummary(out=str(out))
    check_out(out, storage)
    check_bag(bag, topic)  # a bag that cannot be replayed fails here, before anything is written
    messages = read_camera(bag, topic)
    with BagOut(out, storage) as writer:
        executor = BagFramesExecutor(messages, writer, summary, every_s, execute_goal)
        last_ns = [0]  # bag time of the last Plan written

        def write_step(step: Any, plan: Any) -> None:
            # stamped with the planned frame plus the time planning took (a robot would see it then)
            t_out = (executor.planned_ns or 0) + max(1, int(step.timings_ms.get("total", 0.0) * 1e6))
            t_out = max(t_out, last_ns[0] + 1)  # re-plans from the same frame keep their order
            if step.goal is not None:
                writer.write(GOAL_TOPIC, convert.action_goal_msg(writer.factory, step.goal), t_out)
            writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, plan), t_out)
            last_ns[0] = t_out

        loop = GuidanceLoop(backend, instruction, executor, config, on_plan=write_step)
        result = loop.run()
        executor.drain()
        final_ns = max(last_ns[0], executor.planned_ns or 0) + 1
        writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, result.plan), final_ns)
        summary.counts = dict(writer.counts)
    return _summarise(summary, result)


def _summarise(summary: ReplaySummary, result: LoopResult) -> ReplaySummary:
    summary.status, summary.error = result.status.value, result.plan.error
    summary.steps = len(result.plan.steps)
    summary.sentences = [s.text for s in result.plan.steps]
    return summary


class _RecordingSimExecutor(SimExecutor):
    """The sim's skill controller, with every observed frame and step result written to a bag."""

    def __init__(self, env: Any, writer: BagOut, fps: float) -> None:
        super().__init__(env)
        self.writer = writer
        self.dt_ns = int(1e9 / fps)
        self.t_ns = 1_000_000_000 - self.dt_ns

    def observe(self) -> Frame:
        self.t_ns += self.dt_ns
        frame = Frame(self.sim.render(), stamp=self.t_ns * 1e-9, frame_id="camera")
        self.writer.write(CAMERA_TOPIC, convert.image_msg(self.writer.factory, frame.image, frame.stamp, "camera"), self.t_ns)
        return frame

    def execute(self, goal: ActionGoal) -> StepResult:
        result = super().execute(goal)
        self.writer.write(RESULT_TOPIC, _result_msg(self.writer, goal, result, self.sim, self.t_ns), self.t_ns + 2)
        return result


def record_sim(
    env_id: str,
    seed: int,
    out: Path,
    backend: Any = None,
    instruction: str | None = None,
    max_steps: int = 20,
    storage: str = "mcap",
    fps: float = 1.0,
    options: DecodeOptions | None = None,
) -> ReplaySummary:
    """Run one closed-loop sim episode through the one step loop and record it to a bag.

    Camera frames (the view each step was planned from and each view after executing),
    ``1/fps`` seconds apart in bag time, action goals, step results and the plan after each
    step. ``backend`` None uses the oracle on the same env.
    """
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the ids)
    from model_runtime.backends.base import load_backend

    env = gym.make(env_id)
    try:
        env.reset(seed=seed)
        sim = env.unwrapped
        backend = backend or load_backend("oracle", env=env)
        options = options or DecodeOptions(mode=DecodeMode.ORACLE if backend.name == "oracle" else DecodeMode.DIDA)
        summary = ReplaySummary(out=str(out))
        with BagOut(out, storage) as writer:
            executor = _RecordingSimExecutor(env, writer, fps)

            def write_step(step: Any, plan: Any) -> None:
                if step.goal is not None:
                    writer.write(GOAL_TOPIC, convert.action_goal_msg(writer.factory, step.goal), executor.t_ns + 1)
                writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, plan), executor.t_ns + 3)

            loop = GuidanceLoop(backend, instruction or sim.instruction, executor, _loop_config(options, max_steps),
                                on_plan=write_step)
            result = loop.run()
            if result.status == PlanStatus.SUCCEEDED and not sim.task_success():
                result.plan.status, result.plan.error = PlanStatus.FAILED, "task not complete"
                result.status = PlanStatus.FAILED
            writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, result.plan), executor.t_ns + 4)
            summary.frames = writer.counts.get(CAMERA_TOPIC, 0)
            summary.counts = dict(writer.counts)
        return _summarise(summary, result)
    finally:
        env.close()


def _result_msg(writer: BagOut, goal: ActionGoal, result: StepResult, sim: Any, t_ns: int) -> Any:
    return writer.ts.types["emu_guidance/msg/StepResult"](
        header=writer.factory.header(t_ns * 1e-9, "camera"),
        goal_id=goal.goal_id,
        step_index=int(goal.step_index),
        success=bool(result.success),
        reason=result.reason,
        duration_s=float(result.duration_s),
        task_done=bool(sim.task_success()),
    )


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", nargs="?", type=Path, help="input rosbag2 directory (mcap or sqlite3)")
    parser.add_argument("--out", type=Path, required=True, help="output bag directory (must not exist)")
    parser.add_argument("--instruction", help="what to do (required for replay; default for --record-sim: the env's)")
    parser.add_argument("--topic", help="camera topic to use (default: every Image/CompressedImage topic)")
    parser.add_argument("--backend", default="torch", help="guidance backend: torch, emu3, vllm, oracle")
    parser.add_argument("--model", default="", help="model directory ('' = the shipped default model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sim-env", help="oracle backend: the sim env id the bag was recorded from")
    parser.add_argument("--seed", type=int, default=0, help="sim seed (oracle backend, --record-sim)")
    parser.add_argument("--record-sim", metavar="ENV_ID", help="record a closed-loop sim episode instead of replaying")
    parser.add_argument("--decode-mode", default=None, choices=[m.value for m in DecodeMode])
    parser.add_argument("--decode-steps", type=int, default=DEFAULT_DIDA_STEPS, help="DiDA refinement steps")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the model's own)")
    parser.add_argument("--every-s", type=float, default=0.0, help="plan at most once per this many bag seconds")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize frames to H W (default: the backend's)")
    parser.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the checkpoint's own tokenizer code (the official Emu3.5 release); only for checkpoints you trust")


def main(args: argparse.Namespace) -> int:
    from model_runtime.backends.base import BackendError, load_backend

    env = None
    kwargs = {"device": args.device, **({"model_path": args.model} if args.model else {}),
              **({"trust_remote_code": True} if args.trust_remote_code else {})}
    try:
        if args.record_sim:
            check_out(args.out, args.storage)
            backend = None
            if args.backend != "oracle":
                backend = load_backend(args.backend, **kwargs)
            summary = record_sim(args.record_sim, args.seed, args.out, backend, args.instruction, args.max_steps, args.storage)
        else:
            if args.bag is None or not args.instruction:
                raise ValueError("replay needs BAG and --instruction (or --record-sim ENV_ID)")
            check_out(args.out, args.storage)  # the input and the output are checked before the model loads
            check_bag(args.bag, args.topic)
            on_step = None
            if args.backend == "oracle":
                if not args.sim_env:
                    raise ValueError("--backend oracle needs --sim-env (the env id and --seed the bag was recorded from)")
                import gymnasium as gym

                import sim_envs  # noqa: F401

                env = gym.make(args.sim_env)
                env.reset(seed=args.seed)
                backend = load_backend("oracle", env=env)
                on_step = SimExecutor(env).execute  # the sim mirror runs each goal
            else:
                backend = load_backend(args.backend, **kwargs)
            mode = args.decode_mode or ("oracle" if args.backend == "oracle" else None)  # None: the model's own default
            options = DecodeOptions(mode=mode, dida_steps=args.decode_steps, guidance_scale=args.guidance_scale)
            summary = replay_bag(args.bag, args.out, backend, args.instruction, options, args.topic, args.every_s, args.max_steps, args.storage, on_step,
                                 tuple(args.image_size) if args.image_size else None)
    except (ValueError, FileNotFoundError, FileExistsError, BackendError) as exc:
        print(f"emu-guide replay: {exc}")
        return 2
    finally:
        if env is not None:
            env.close()
    print(json.dumps(summary.__dict__, indent=2))
    return 0 if summary.status != PlanStatus.FAILED.value else 1
