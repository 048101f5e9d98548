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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu_guide.types import DecodeMode, Frame, PlanStatus, StepResult
from emu_ros import convert, interfaces
from emu_ros.guide_loop import GuideRun
from model_runtime.backends.base import DecodeOptions

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


def read_camera(bag: Path, topic: str | None = None) -> Iterator[CameraMessage]:
    """Camera messages of ``bag`` (all Image/CompressedImage topics, or ``topic``) in time order."""
    from rosbags.highlevel import AnyReader

    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag {bag} does not exist")
    with AnyReader([bag], default_typestore=interfaces.typestore()) as reader:
        conns = [c for c in reader.connections if c.msgtype in IMAGE_TYPES and (topic is None or c.topic == topic)]
        if not conns:
            found = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
            want = f"topic {topic!r}" if topic else "an Image/CompressedImage topic"
            raise ValueError(f"bag {bag} has no {want}; it has: {found}")
        for conn, timestamp, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            to_frame = convert.frame_from_image if conn.msgtype.endswith("/Image") else convert.frame_from_compressed
            try:
                yield CameraMessage(conn.topic, conn.msgtype, timestamp, bytes(raw), to_frame(msg))
            except ValueError as exc:
                yield CameraMessage(conn.topic, conn.msgtype, timestamp, bytes(raw), None, str(exc))


class BagOut:
    """A rosbag2 writer with our types: camera frames, plans, action goals, step results."""

    def __init__(self, path: Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        path = Path(path)
        if path.exists():
            raise FileExistsError(f"output bag {path} already exists; choose a new --out")
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be one of {sorted(plugins)}, got {storage!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ts = interfaces.typestore()
        self.factory = convert.rosbags_factory(self.ts)
        self.writer = Writer(path, version=9, storage_plugin=plugins[storage])
        self.writer.open()
        self.path = path
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def write_raw(self, topic: str, msgtype: str, timestamp_ns: int, raw: bytes) -> None:
        if topic not in self._conns:
            self._conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        self.writer.write(self._conns[topic], int(timestamp_ns), raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write(self, topic: str, msg: Any, timestamp_ns: int) -> None:
        self.write_raw(topic, msg.__msgtype__, timestamp_ns, self.ts.serialize_cdr(msg, msg.__msgtype__))

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> BagOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    on_step_executed: Any = None,
    image_size: tuple[int, int] | None = None,
) -> ReplaySummary:
    """Plan from the frames of ``bag`` (one step per frame at most every ``every_s`` bag seconds).

    All camera messages are copied to ``out`` unchanged; a Plan (the plan so far) and an ActionGoal
    follow each planned frame, stamped with that frame. Each step counts as done by the next planned
    frame (the recording's robot acted in between: choose ``every_s`` to match its step time);
    ``on_step_executed(step)`` may execute it instead (the oracle's sim mirror) and return a
    StepResult whose ``success`` decides. ``image_size`` (h, w): resize
    frames to it before the backend (default: the backend's own input size). A backend error ends the replay
    with status "failed" and the error in the last Plan, never a traceback mid-bag.
    """
    from model_runtime.backends.base import BackendError

    run = GuideRun(backend, instruction, options=options or DecodeOptions(), max_steps=max_steps, image_size=image_size)
    summary = ReplaySummary(out=str(out))
    last_planned_ns: int | None = None
    with BagOut(out, storage) as writer:
        for msg in read_camera(bag, topic):
            writer.write_raw(msg.topic, msg.msgtype, msg.timestamp_ns, msg.raw)
            summary.frames += 1
            if msg.frame is None:
                summary.frames_rejected += 1
                summary.rejected_reasons.append(msg.error)
                continue
            due = last_planned_ns is None or msg.timestamp_ns - last_planned_ns >= every_s * 1e9
            if run.done or summary.status != PlanStatus.RUNNING.value or not due:
                continue
            last_planned_ns = msg.timestamp_ns
            try:
                step = run.step(msg.frame)
            except (BackendError, ValueError) as exc:  # SessionError is a ValueError
                plan = run.finish(PlanStatus.FAILED, f"{type(exc).__name__}: {exc}")
                writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, plan), msg.timestamp_ns + 1)
                summary.status, summary.error = plan.status.value, plan.error
                continue
            t_out = msg.timestamp_ns + max(1, int(step.timings_ms.get("total", 0.0) * 1e6))
            if step.goal is not None:
                writer.write(GOAL_TOPIC, convert.action_goal_msg(writer.factory, step.goal), t_out)
            if not step.is_final:
                # The recording's robot acted before the next planned frame: the step counts as done,
                # unless an executor (the oracle's sim mirror) says otherwise.
                outcome = on_step_executed(step) if on_step_executed is not None else None
                run.record_result(step, bool(getattr(outcome, "success", True)))
            if run.done:
                run.finish(PlanStatus.SUCCEEDED)
                summary.status = PlanStatus.SUCCEEDED.value
            writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, run.plan), t_out)
        if summary.status == PlanStatus.RUNNING.value:  # the bag ended before the task did
            writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, run.plan), (last_planned_ns or 0) + 2)
        summary.counts = dict(writer.counts)
    summary.steps = len(run.plan.steps)
    summary.sentences = [s.text for s in run.plan.steps]
    return summary


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
    """Run one closed-loop sim episode and record it to a bag (camera, plans, goals, step results).

    One camera frame per planning step (the view the step was planned from) plus the final view,
    ``1/fps`` seconds apart in bag time. ``backend`` None uses the oracle on the same env.
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
        run = GuideRun(backend, instruction or sim.instruction, options=options, max_steps=max_steps)
        summary = ReplaySummary(out=str(out))
        t_ns, dt_ns = 1_000_000_000, int(1e9 / fps)
        with BagOut(out, storage) as writer:
            while True:
                frame = Frame(sim.render(), stamp=t_ns * 1e-9, frame_id="camera")
                writer.write(CAMERA_TOPIC, convert.image_msg(writer.factory, frame.image, frame.stamp, "camera"), t_ns)
                summary.frames += 1
                if run.done or sim.task_success():
                    break
                step = run.step(frame)
                if step.goal is not None:
                    writer.write(GOAL_TOPIC, convert.action_goal_msg(writer.factory, step.goal), t_ns + 1)
                if not step.is_final and step.goal is not None:
                    result = _execute(sim, step.goal)
                    run.record_result(step, result.success)
                    writer.write(RESULT_TOPIC, _result_msg(writer, step, result, sim, t_ns), t_ns + 2)
                writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, run.plan), t_ns + 3)
                t_ns += dt_ns
            status = PlanStatus.SUCCEEDED if sim.task_success() else PlanStatus.FAILED
            plan = run.finish(status, "" if status == PlanStatus.SUCCEEDED else "task not complete")
            writer.write(PLAN_TOPIC, convert.plan_msg(writer.factory, plan), t_ns + 4)
            summary.counts = dict(writer.counts)
        summary.status, summary.error = plan.status.value, plan.error
        summary.steps = len(plan.steps)
        summary.sentences = [s.text for s in plan.steps]
        return summary
    finally:
        env.close()


def _execute(sim: Any, goal: Any) -> StepResult:
    if goal.verb == "done":
        return StepResult(goal.step_index, bool(sim.task_success()), "" if sim.task_success() else "task not complete")
    try:
        return sim.execute_skill(goal)
    except ValueError as exc:  # SkillError names the valid choices
        return StepResult(goal.step_index, False, f"{type(exc).__name__}: {exc}")


def _result_msg(writer: BagOut, step: Any, result: StepResult, sim: Any, t_ns: int) -> Any:
    return writer.ts.types["emu_guidance/msg/StepResult"](
        header=writer.factory.header(t_ns * 1e-9, "camera"),
        goal_id=step.goal.goal_id,
        step_index=int(step.goal.step_index),
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
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--every-s", type=float, default=0.0, help="plan at most once per this many bag seconds")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize frames to H W (default: the backend's)")
    parser.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])


def main(args: argparse.Namespace) -> int:
    from model_runtime.backends.base import BackendError, load_backend

    env = None
    kwargs = {"device": args.device, **({"model_path": args.model} if args.model else {})}
    try:
        if args.record_sim:
            backend = None
            if args.backend != "oracle":
                backend = load_backend(args.backend, **kwargs)
            summary = record_sim(args.record_sim, args.seed, args.out, backend, args.instruction, args.max_steps, args.storage)
        else:
            if args.bag is None or not args.instruction:
                raise ValueError("replay needs BAG and --instruction (or --record-sim ENV_ID)")
            on_step = None
            if args.backend == "oracle":
                if not args.sim_env:
                    raise ValueError("--backend oracle needs --sim-env (the env id and --seed the bag was recorded from)")
                import gymnasium as gym

                import sim_envs  # noqa: F401

                env = gym.make(args.sim_env)
                env.reset(seed=args.seed)
                backend = load_backend("oracle", env=env)
                on_step = lambda step: step.goal and _execute(env.unwrapped, step.goal)  # noqa: E731  (sim mirror)
            else:
                backend = load_backend(args.backend, **kwargs)
            mode = args.decode_mode or ("oracle" if args.backend == "oracle" else "dida")
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
