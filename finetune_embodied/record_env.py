"""``emu-guide record --env module:callable``: expert episodes of any guidance environment -> LeRobot v3.0.

Our sims have a scripted expert of their own (``finetune_embodied.record``). An environment brought
through the guidance protocol (``emu_guide/env_protocol.py``, docs/environments.md) has one too,
implicitly: its ``ground_truth_plan()`` run step by step through ``execute_skill``. This recorder
does exactly that and writes what the arm did:

- every low-level ``step`` the skill makes on ``env.unwrapped`` (the Gymnasium contract: skills act
  through the env's own ``step``) becomes a frame: the camera image (``render()``), the observation
  vector as ``observation.state`` (named by the optional ``state_names()``, else ``obs_0..``), the
  action, and the running plan step's sentence as the frame's subtask label;
- a skill that changes the scene without calling ``step`` (a toy env) gives one frame, after it;
- frame 0 is the reset frame; frame t > 0 is the observation after action t-1 and carries that
  step's label (``finetune_embodied.record``'s convention: a step's last frame shows it done).

Seeds are the TRAIN range (``sim_envs.seeds``), so ``emu-guide bench`` (held-out seeds) never sees a
recorded scene. An episode whose plan does not reach ``task_success()`` is left out and listed.
No mistakes are injected (the protocol has no notion of a wrong step to recover from).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emu_guide.env_protocol import guidance_env, is_import_path, load_env_factory

__all__ = ["EnvRecordConfig", "StepRecorder", "make_protocol_env", "record_env", "record_env_episode"]

CAMERA = "observation.images.front"


def make_protocol_env(target: str, resolution: int | None = None) -> Any:
    """``module:callable`` or a registered Gymnasium id -> the env (checked against the protocol)."""
    if is_import_path(target):
        env = load_env_factory(target, resolution)
    else:
        import gymnasium as gym

        import sim_envs  # noqa: F401  (registers our ids; any other registered id works too)

        try:
            env = gym.make(target, **({"resolution": int(resolution)} if resolution else {}))
        except Exception as exc:  # gymnasium raises several types for unknown ids / bad kwargs
            raise ValueError(f"cannot make the environment {target!r}: {exc}") from None
    guidance_env(env)  # EnvProtocolError (a ValueError) naming what is missing
    return env


def _flat(x: Any) -> np.ndarray:
    """An observation or action -> a flat float32 vector (a dict observation: its "state" entry)."""
    if isinstance(x, dict):
        x = x.get("state", np.zeros(0))
    arr = np.asarray(x, dtype=np.float32).reshape(-1)
    return arr if arr.size <= 4096 else np.zeros(0, np.float32)  # an image observation is not a state


class StepRecorder:
    """Observes every ``step`` call on ``env.unwrapped`` while installed (an instance attribute
    shadows the class method; ``remove()`` restores it). Each call appends (frame, state, action)."""

    def __init__(self, env: Any, render: Callable[[], np.ndarray]) -> None:
        self.target = env.unwrapped
        self.render = render
        self.frames: list[np.ndarray] = []
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self._orig = self.target.step

        def step(action: Any):
            out = self._orig(action)
            self.actions.append(_flat(action))
            self.states.append(_flat(out[0]))
            self.frames.append(np.asarray(self.render(), dtype=np.uint8))
            return out

        self.target.step = step

    def remove(self) -> None:
        if self.target.__dict__.get("step") is not None:
            del self.target.step


@dataclass
class EnvRecordConfig:
    out: str  # dataset folder (replaced when complete)
    envs: tuple[str, ...]  # module:callable or registered Gymnasium ids; episodes are env-major, then seed
    seeds: tuple[int, ...] = ()  # explicit TRAIN seeds; empty -> episodes from seed_offset
    episodes: int = 10
    seed_offset: int = 0
    resolution: int = 96
    fps: int = 10
    pix_fmt: str = "yuv444p"
    crf: int = 0

    def __post_init__(self) -> None:
        from sim_envs.seeds import recording_seeds

        self.envs = tuple(self.envs)
        if not self.envs:
            raise ValueError("no environment to record (--env MODULE:CALLABLE ...)")
        self.seeds = recording_seeds(self.seeds, self.episodes, self.seed_offset)
        if self.resolution <= 0 or self.resolution % 2:
            raise ValueError(f"resolution must be a positive even number (video needs it), got {self.resolution}")
        from finetune_embodied.datasets.video import check_video_settings

        check_video_settings(self.pix_fmt, self.crf)


def record_env_episode(env: Any, seed: int) -> tuple[dict, dict]:
    """One expert episode of a protocol env: (arrays + labels, summary). The plan is the env's
    ``ground_truth_plan()`` at reset, each step run through ``execute_skill``."""
    g = guidance_env(env)
    for member in ("ground_truth_plan", "task_success"):
        if not hasattr(g, member):
            raise ValueError(f"{type(g).__name__} has no {member}(): recording needs the expert plan and its success "
                             "(docs/environments.md)")
    obs, _ = env.reset(seed=int(seed))
    frames, states, actions, labels = [np.asarray(g.render(), np.uint8)], [_flat(obs)], [], []
    plan = g.ground_truth_plan()
    rec = StepRecorder(env, g.render)
    error = ""
    try:
        for step in plan:
            before = len(rec.frames)
            res = g.execute_skill(step.goal)
            if len(rec.frames) == before:  # the skill never called step(): one frame after it
                rec.frames.append(np.asarray(g.render(), np.uint8))
                rec.states.append(states[-1] if not rec.states else rec.states[-1])
                rec.actions.append(np.zeros(0, np.float32))
            labels += [step.text] * (len(rec.frames) - before)
            if not res.success:
                error = f"step {step.index} {step.text!r}: {res.reason or 'failed'}"
                break
    finally:
        rec.remove()
    frames += rec.frames
    states += rec.states
    # LeRobot columns cannot be empty: an env without a vector observation or action (an image
    # observation, skills that never call step) gets one zero column, named no_state / no_action.
    dim_a = max((a.size for a in rec.actions), default=0) or 1
    actions = [np.pad(a, (0, dim_a - a.size)) for a in rec.actions] + [np.zeros(dim_a, np.float32)]
    dim_s = states[0].size
    if any(s.size != dim_s for s in states):
        raise ValueError(f"observation vectors change size within an episode ({sorted({s.size for s in states})})")
    if dim_s == 0:
        states = [np.zeros(1, np.float32) for _ in states]
    success = bool(g.task_success()) and not error
    data = {"images": np.stack(frames), "state": np.stack(states), "action": np.stack(actions),
            "has_state": dim_s > 0, "has_action": any(a.size for a in rec.actions),
            "subtasks": [labels[0] if labels else plan[0].text] + labels, "instruction": str(g.instruction)}
    return data, {"seed": int(seed), "frames": len(frames), "steps": len(plan), "success": success,
                  "error": error or ("" if success else "task not completed")}


def record_env(cfg: EnvRecordConfig, progress: bool = True) -> dict:
    """Record ``cfg.seeds`` episodes of each of ``cfg.envs`` into a new v3 dataset at ``cfg.out``
    (the envs must share one observation layout: same state size and names)."""
    import os
    import shutil

    from finetune_embodied.datasets import Episode, LeRobotV3Writer
    from finetune_embodied.record import swap_in, write_manifest

    out = Path(cfg.out)
    tmp = Path(f"{out}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = None
    included, excluded = [], []
    t0 = time.perf_counter()
    names: list[str] = []
    try:
        for target in cfg.envs:
            env = make_protocol_env(target, cfg.resolution)
            g = guidance_env(env)
            try:
                for n, seed in enumerate(cfg.seeds):
                    data, summary = record_env_episode(env, seed)
                    if progress:
                        print(f"[record] {target} seed {seed}: {summary['frames']} frames, "
                              f"{'ok' if summary['success'] else summary['error']} ({n + 1}/{len(cfg.seeds)})", flush=True)
                    if not summary["success"]:
                        excluded.append({"env": target, "seed": seed, "reason": summary["error"]})
                        continue
                    dim = data["state"].shape[1]
                    own = list(g.state_names()) if hasattr(g, "state_names") else [f"obs_{i}" for i in range(dim)]
                    if not data["has_state"]:
                        own = ["no_state"]
                    if len(own) != dim:
                        raise ValueError(f"{target}: state_names() has {len(own)} names for a {dim}-column observation")
                    if writer is None:
                        names = own
                        h, w = data["images"].shape[1:3]
                        writer = LeRobotV3Writer(tmp, cfg.fps, {CAMERA: (h, w)}, names,
                                                 [f"a{i}" for i in range(data["action"].shape[1])]
                                                 if data["has_action"] else ["no_action"],
                                                 robot_type=str(getattr(g, "task_name", type(g).__name__)),
                                                 with_subtasks=True, pix_fmt=cfg.pix_fmt, crf=cfg.crf)
                    elif own != names:
                        raise ValueError(f"{target}: its state columns {own[:4]}... differ from the first env's "
                                         f"{names[:4]}...: record it into a dataset of its own")
                    idx = writer.add_episode(Episode(task=data["instruction"], images={CAMERA: data["images"]},
                                                     state=data["state"], action=data["action"],
                                                     subtasks=data["subtasks"]))
                    included.append({"episode_index": idx, "env": target, "seed": seed, "length": summary["frames"]})
            finally:
                env.close()
        if writer is None:
            raise RuntimeError(f"no successful episode among {len(cfg.seeds) * len(cfg.envs)}: nothing to write")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_manifest(tmp, cfg, included, excluded)
    swap_in(tmp, out)
    return {"out": str(out), "episodes_in_dataset": len(included), "episodes_excluded": excluded,
            "frames": sum(e["length"] for e in included), "seconds": time.perf_counter() - t0}


def main_env(args: Any) -> int:
    """``emu-guide record --env TARGET`` (the arguments of ``finetune_embodied.record.add_arguments``)."""
    from emu_guide.paths import artifacts_root

    out = args.out or str(artifacts_root() / "datasets" / "env")
    try:
        cfg = EnvRecordConfig(out=out, envs=tuple(args.env), seeds=tuple(args.seeds or ()), episodes=args.episodes,
                              seed_offset=args.seed_offset, resolution=args.resolution, fps=args.fps,
                              pix_fmt=args.pix_fmt, crf=args.crf)
        summary = record_env(cfg, progress=not args.no_progress)
    except (ValueError, RuntimeError) as exc:
        print(f"emu-guide record: {exc}")
        return 2
    print(f"dataset: {summary['out']}")
    print(f"{'episodes':<22}{summary['episodes_in_dataset']} in dataset, {summary['frames']} frames "
          f"({summary['seconds']:.0f} s)")
    for e in summary["episodes_excluded"]:
        print(f"excluded: seed {e['seed']}: {e['reason']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0
