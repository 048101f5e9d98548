"""``emu-guide record``: scripted-expert episodes from sim_envs -> a LeRobot v3.0 dataset.

Episodes come from the TRAIN seed range only (``sim_envs.seeds.check_seed``); the expert injects
mistakes and their recoveries with probability ``--mistake-rate`` per plan step, and every frame is
labelled with the sentence of the (sub)step it belongs to: plan steps, mistakes and recoveries alike.

Resumable by design: each worker process writes one shard per episode to
``<out>.shards/<task>-<seed>.npz`` (written to a temporary name, then renamed: a shard is either
complete or absent). A re-run with the same arguments skips the shards that exist, then
consolidates all of them, in job order, into a fresh v3 folder that replaces ``<out>`` by rename.
So a recording killed at any point resumes without duplicating or losing an episode.

Frame convention: frame 0 is the reset observation; frame t > 0 is the observation after action
t-1 and carries that action's step label, so the last frame of a subtask shows it completed (its
keyframe). ``action[t]`` is the action taken at frame t (LeRobot's convention); the last frame
gets a hold action (no motion, gripper unchanged).

Perception targets: every frame's ground truth (the objects on the table with their coarse cell,
and the held object, from ``privileged_state()``) is stored as ``model_runtime.prompt.format_perception``
text in the shard and, at consolidation, in ``meta/emu_perception.jsonl`` next to the LeRobot files
(one line per episode: ``{"episode_index", "task", "seed", "frames": [text per frame], "pixels": [per
frame, the [u, v] pixel of each listed object, then of the held one when the frame holds one], "step_kinds": [per frame "plan" | "failed" | "mistake" |
"recovery"]}``; a plan segment is "failed" when its goal does not hold at its end). The "perceive" answer format trains on it
(``data.answer: perceive``; the pixels give the per-cell targets of ``perception_aux``); LeRobot
readers ignore the file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from emu_guide.paths import artifacts_root

__all__ = ["PERCEPTION_FILE", "RecordConfig", "add_arguments", "load_perceptions", "load_step_kinds", "main", "record", "record_episode",
           "frame_perception", "scene_perception", "task_env_ids"]

STATE_NAMES = ["ee_x", "ee_y", "ee_z", "gripper", "holding"]  # sim_envs TabletopEnv state layout
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
CAMERA = "observation.images.front"
PERCEPTION_FILE = "meta/emu_perception.jsonl"


def scene_perception(env, width: int, height: int) -> dict:
    """Ground-truth perception of a TabletopEnv now, as the "perceive" format lists it:
    ``{"objects": [{"name", "cell", "pixel"}] in reading order, "holding"}``
    (``sim_envs.perception.visible_objects`` put in ``model_runtime.prompt``'s reading order)."""
    from model_runtime.prompt import perception_in_reading_order
    from sim_envs.perception import visible_objects

    seen = visible_objects(env)
    return {**perception_in_reading_order(seen["objects"], seen["holding"], width, height),
            "holding_pixel": seen.get("holding_pixel")}


def frame_perception(env, width: int, height: int) -> tuple[str, list[list[float]]]:
    """(perception text, pixel [u, v] of each listed object in the text's order, then of the held
    object when one is held and the sim says where) of the frame now."""
    from model_runtime.prompt import format_perception

    p = scene_perception(env, width, height)
    pixels = [o["pixel"] for o in p["objects"]] + ([p["holding_pixel"]] if p["holding"] and p["holding_pixel"] else [])
    return format_perception(p["objects"], p["holding"]), [[round(float(c), 2) for c in px] for px in pixels]


def task_env_ids() -> dict[str, str]:
    """task name -> registered env id, e.g. table_clear -> sim_envs/TableClear-v0."""
    import sim_envs

    out = {}
    for env_id in sim_envs.ENV_IDS:
        name = env_id.split("/")[-1].split("-v")[0]
        out[re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()] = env_id
    return out


@dataclass
class RecordConfig:
    out: str  # dataset folder (replaced on completion); shards live in <out>.shards
    tasks: tuple[str, ...] = ("table_clear",)
    seeds: tuple[int, ...] = ()  # explicit TRAIN seeds; empty -> episodes_per_task seeds from seed_offset
    episodes_per_task: int = 10
    # More scenes of some tasks: task -> episodes (its first N seeds from seed_offset); the others
    # record episodes_per_task. Not with explicit seeds.
    episodes_by_task: dict[str, int] = field(default_factory=dict)
    seed_offset: int = 0  # first seed = TRAIN_SEEDS[seed_offset]
    mistake_rate: float = 0.2
    resolution: int = 64
    fps: int = 10
    max_steps: int = 2000  # low-level steps per episode before giving up
    workers: int = 1
    keep_shards: bool = True  # shards let a later run with more episodes reuse these
    # Video of the consolidated dataset. Full-resolution chroma and lossless (in YUV) by default:
    # training frames must look like the live frames the model will see (yuv420p crf 20 moved 30%
    # of the default tokenizer's codes; yuv444p crf 0 about 6%, docs/datasets.md).
    pix_fmt: str = "yuv444p"
    crf: int = 0

    def __post_init__(self) -> None:
        from sim_envs.seeds import recording_seeds

        self.tasks = tuple(self.tasks)
        explicit_seeds = bool(self.seeds)
        known = task_env_ids()
        bad = [t for t in self.tasks if t not in known]
        if bad or not self.tasks:
            raise ValueError(f"unknown task(s) {bad or self.tasks}; registered: {', '.join(known)}")
        self.seeds = recording_seeds(self.seeds, self.episodes_per_task, self.seed_offset)
        self.episodes_by_task = {str(t): n for t, n in dict(self.episodes_by_task or {}).items()}
        not_counts = {t: n for t, n in self.episodes_by_task.items() if not isinstance(n, int) or isinstance(n, bool)}
        if not_counts:
            raise ValueError(f"episodes_by_task needs whole episode counts per task, got {not_counts}")
        stray = [t for t in self.episodes_by_task if t not in self.tasks]
        if stray:
            raise ValueError(f"episodes_by_task names task(s) {stray} that are not among the recorded tasks {list(self.tasks)}")
        if self.episodes_by_task and explicit_seeds:
            raise ValueError("episodes_by_task and explicit seeds do not go together (give one or the other)")
        self._task_seeds = {t: recording_seeds((), n, self.seed_offset) for t, n in self.episodes_by_task.items()}
        if not 0.0 <= self.mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {self.mistake_rate}")
        if self.resolution <= 0 or self.resolution % 2:
            raise ValueError(f"resolution must be a positive even number (video needs it), got {self.resolution}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        from finetune_embodied.datasets.video import check_video_settings

        check_video_settings(self.pix_fmt, self.crf)
        if self.fps <= 0 or self.max_steps <= 0:
            raise ValueError(f"fps and max_steps must be positive, got {self.fps}, {self.max_steps}")

    def jobs(self) -> list[tuple[str, int]]:
        """(task, seed) in dataset order: task-major, then seed."""
        return [(t, s) for t in self.tasks for s in self._task_seeds.get(t, self.seeds)]

    @property
    def shard_dir(self) -> Path:
        return Path(str(Path(self.out)) + ".shards")


def shard_path(shard_dir: Path, task: str, seed: int) -> Path:
    return shard_dir / f"{task}-{seed:07d}.npz"


def record_episode(task: str, seed: int, cfg: RecordConfig) -> dict:
    """Run the expert on one (task, seed) and write its shard atomically. Returns a summary."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the env ids in this process too: spawn-safe)
    from sim_envs.expert import ExpertError, ScriptedExpert

    t0 = time.perf_counter()
    env = gym.make(task_env_ids()[task], resolution=cfg.resolution, max_episode_steps=cfg.max_steps)
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    # The expert's own mistake draws are seeded from the episode seed: re-recording is deterministic.
    expert = ScriptedExpert(env, mistake_rate=cfg.mistake_rate, seed=seed)
    images, states, actions, labels = [obs["image"]], [obs["state"]], [], []
    res = obs["image"].shape
    perceptions = [frame_perception(u, res[1], res[0])]
    error = ""
    segment, kinds, first = None, [], 0  # kinds: per action, the kind of the segment it belongs to

    def close_segment() -> None:  # at its end, before the next segment's first action
        ok = segment.goal is not None and u.check_step(segment.goal)
        kind = segment.kind if segment.kind != "plan" else ("plan" if ok else "failed")
        kinds[first:] = [kind] * (len(kinds) - first)

    try:
        while not expert.done:
            action, _, text = expert.next_action()
            if expert.segment is not segment:
                if segment is not None:
                    close_segment()
                segment, first = expert.segment, len(kinds)
            obs, _, _, truncated, _ = env.step(action)
            actions.append(action)
            labels.append(text)
            kinds.append(segment.kind)
            images.append(obs["image"])
            states.append(obs["state"])
            perceptions.append(frame_perception(u, res[1], res[0]))
            # Not on `terminated`: the env reports success the moment the last step's check passes,
            # mid-motion; the expert finishes the step (release, retreat) as the loop's executor does,
            # so the last frame is the post-step frame the loop verifies and plans "done" from.
            if truncated:
                break
    except ExpertError as exc:
        error = str(exc)
    if segment is not None:
        close_segment()
    success = bool(u.task_success())
    instruction = u.instruction
    env.close()
    if not actions:
        raise RuntimeError(f"{task} seed {seed}: the expert produced no action")
    # Hold at the last frame: no motion, gripper as it is.
    hold = np.zeros(4, dtype=np.float32)
    hold[3] = 1.0 if states[-1][3] > 0.5 else -1.0
    actions.append(hold)
    subtasks = [labels[0]] + labels  # frame t>0 carries the label of the action that led to it
    kinds = [kinds[0]] + kinds
    path = shard_path(cfg.shard_dir, task, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            images=np.stack(images).astype(np.uint8),
            state=np.stack(states).astype(np.float32),
            action=np.stack(actions).astype(np.float32),
            subtasks=np.array(subtasks),
            step_kinds=np.array(kinds),
            perception=np.array([text for text, _ in perceptions]),
            perception_pixels=np.array(json.dumps([pixels for _, pixels in perceptions])),
            meta=np.array(json.dumps({"task": task, "seed": seed, "instruction": instruction, "success": success,
                                      "mistakes": expert.mistakes, "error": error, **shard_settings(cfg)})),
        )
    os.replace(tmp, path)  # atomic: the shard is complete or absent
    return {"task": task, "seed": seed, "frames": len(images), "success": success, "mistakes": expert.mistakes,
            "error": error, "seconds": time.perf_counter() - t0}


def _worker(job: tuple[str, int, RecordConfig]) -> dict:
    task, seed, cfg = job
    return record_episode(task, seed, cfg)


def shard_settings(cfg: RecordConfig) -> dict:
    """The settings an episode depends on: a resumed run must use the same ones."""
    return {"resolution": cfg.resolution, "mistake_rate": cfg.mistake_rate, "max_steps": cfg.max_steps}


def _perception_docs(root: str | Path) -> list[dict] | None:
    """The per-episode lines of a recording's PERCEPTION_FILE (None when it has none)."""
    path = Path(root) / PERCEPTION_FILE
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_perceptions(root: str | Path, pixels: bool = False) -> dict[int, list] | None:
    """episode_index -> perception text per frame, from a recording's PERCEPTION_FILE (None if absent).

    ``pixels=True``: per frame ``(text, [[u, v] per listed object, then the held one's])`` instead,
    or None when the file was recorded before object pixels were stored."""
    docs = _perception_docs(root)
    if docs is None:
        return None
    out = {}
    for doc in docs:
        texts = [str(t) for t in doc["frames"]]
        if pixels:
            if "pixels" not in doc or len(doc["pixels"]) != len(texts):
                return None
            out[int(doc["episode_index"])] = list(zip(texts, doc["pixels"]))
        else:
            out[int(doc["episode_index"])] = texts
    return out


def load_step_kinds(root: str | Path) -> dict[int, list[str]] | None:
    """episode_index -> the kind of step each frame belongs to (``finetune_embodied.sequences.STEP_KINDS``),
    from a recording's PERCEPTION_FILE; None when absent or recorded before step kinds were stored."""
    docs = _perception_docs(root)
    if docs is None or any("step_kinds" not in doc for doc in docs):
        return None
    return {int(doc["episode_index"]): [str(k) for k in doc["step_kinds"]] for doc in docs}


def load_shard(path: Path, cfg: RecordConfig | None = None):
    """A shard -> (Episode, meta dict); with ``cfg``, refuse a shard recorded with other settings.
    ``meta["perception"]``: the per-frame perception texts (None for shards from before them)."""
    from finetune_embodied.datasets import Episode

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        meta["perception"] = [str(t) for t in z["perception"]] if "perception" in z.files else None
        meta["perception_pixels"] = json.loads(str(z["perception_pixels"])) if "perception_pixels" in z.files else None
        meta["step_kinds"] = [str(k) for k in z["step_kinds"]] if "step_kinds" in z.files else None
        if cfg is not None:
            want = shard_settings(cfg)
            got = {k: meta.get(k) for k in want}
            if got != want:
                raise ValueError(
                    f"shard {path} was recorded with {got}, this run asks for {want}: "
                    f"use another --out or delete {path.parent}"
                )
        ep = Episode(task=meta["instruction"], images={CAMERA: z["images"]}, state=z["state"], action=z["action"],
                     subtasks=[str(s) for s in z["subtasks"]])
    return ep, meta


def consolidate(cfg: RecordConfig) -> dict:
    """All shards of ``cfg.jobs()`` -> a new v3 dataset at ``cfg.out`` (built aside, swapped in by rename).
    Unsuccessful episodes are left out and listed (never silently)."""
    from finetune_embodied.datasets import LeRobotV3Writer

    out = Path(cfg.out)
    tmp = Path(f"{out}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    included, excluded, perception_lines = [], [], []
    writer = LeRobotV3Writer(tmp, cfg.fps, {CAMERA: (cfg.resolution, cfg.resolution)}, STATE_NAMES, ACTION_NAMES,
                             robot_type="sim_envs_tabletop", with_subtasks=True, pix_fmt=cfg.pix_fmt, crf=cfg.crf)
    try:
        for task, seed in cfg.jobs():
            ep, meta = load_shard(shard_path(cfg.shard_dir, task, seed), cfg)
            if not meta["success"]:
                excluded.append({"task": task, "seed": seed, "reason": meta["error"] or "task not completed"})
                continue
            idx = writer.add_episode(ep)
            if meta["perception"] is not None:
                line = {"episode_index": idx, "task": task, "seed": seed, "frames": meta["perception"]}
                if meta["perception_pixels"] is not None:
                    line["pixels"] = meta["perception_pixels"]
                if meta["step_kinds"] is not None:
                    line["step_kinds"] = meta["step_kinds"]
                perception_lines.append(json.dumps(line))
            included.append({"episode_index": idx, "task": task, "seed": seed, "mistakes": meta["mistakes"],
                             "length": ep.length})
        if not included:
            raise RuntimeError(f"no successful episode among {len(cfg.jobs())}: nothing to write")
        writer.close()
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = write_manifest(tmp, cfg, included, excluded)
    if perception_lines and len(perception_lines) == len(included):  # every episode has them (else none)
        (tmp / PERCEPTION_FILE).write_text("\n".join(perception_lines) + "\n")
    swap_in(tmp, out)
    return manifest


def write_manifest(root: Path, cfg, included: list[dict], excluded: list[dict]) -> dict:
    """``meta/emu_recording.json`` of a recording: its settings (a dataclass) and what went in or not."""
    manifest = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
                "episodes": included, "excluded": excluded}
    (root / "meta" / "emu_recording.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished dataset ``tmp`` (renames: never half a dataset at ``out``)."""
    old = Path(f"{out}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.is_symlink():  # <out> was a link to a dataset elsewhere: drop the link, keep its target
        old.unlink()
    elif old.exists():
        shutil.rmtree(old)


_CONTENT_FIELDS_IGNORED = ("out", "workers", "keep_shards")  # do not change what the dataset holds


def _up_to_date_manifest(cfg: RecordConfig) -> dict | None:
    """The manifest of ``cfg.out`` when it was consolidated from exactly these jobs and settings, else None."""
    path = Path(cfg.out) / "meta" / "emu_recording.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k not in _CONTENT_FIELDS_IGNORED}
    # A setting added after the dataset was recorded reads as its default there.
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default for f in fields(cfg)}
    have = {k: manifest.get("config", {}).get(k, defaults[k]) for k in want}
    listed = len(manifest.get("episodes", [])) + len(manifest.get("excluded", []))
    return manifest if have == want and listed == len(cfg.jobs()) else None


def record(cfg: RecordConfig, progress: bool = True) -> dict:
    """Record the missing shards (in ``cfg.workers`` processes), then consolidate. Returns a summary."""
    from tqdm import tqdm

    out = Path(cfg.out)
    for stale in out.parent.glob(f"{out.name}.tmp-*"):  # a consolidation that was interrupted
        shutil.rmtree(stale, ignore_errors=True)
    for partial in cfg.shard_dir.glob(".*.tmp"):  # a shard whose worker was killed while writing
        partial.unlink(missing_ok=True)
    jobs = cfg.jobs()
    todo = [(t, s) for t, s in jobs if not shard_path(cfg.shard_dir, t, s).is_file()]
    t0 = time.perf_counter()
    results = []
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="record", unit="ep", disable=not progress)
    if cfg.workers == 1 or len(todo) <= 1:
        for t, s in todo:
            results.append(record_episode(t, s, cfg))
            bar.update(1)
    else:
        import multiprocessing as mp

        # spawn: no forked copies of torch/OpenCV state; workers import what they need.
        with mp.get_context("spawn").Pool(min(cfg.workers, len(todo))) as pool:
            for r in pool.imap_unordered(_worker, [(t, s, cfg) for t, s in todo]):
                results.append(r)
                bar.update(1)
    bar.close()
    record_s = time.perf_counter() - t0
    manifest = None if todo else _up_to_date_manifest(cfg)  # a resumed pipeline: nothing new to write
    if manifest is None:
        manifest = consolidate(cfg)
    if not cfg.keep_shards:
        shutil.rmtree(cfg.shard_dir, ignore_errors=True)
    frames = sum(r["frames"] for r in results)
    return {
        "episodes_total": len(jobs),
        "episodes_recorded_now": len(results),
        "episodes_resumed": len(jobs) - len(todo),
        "episodes_in_dataset": len(manifest["episodes"]),
        "episodes_excluded": manifest["excluded"],
        "mistakes_injected": sum(e["mistakes"] for e in manifest["episodes"]),
        "frames_recorded_now": frames,
        "record_seconds": record_s,
        "episodes_per_min": 60.0 * len(results) / record_s if results else 0.0,
        "total_seconds": time.perf_counter() - t0,
        "workers": cfg.workers,
        "out": str(out),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune_embodied.datasets.video import PIX_FMTS

    parser.add_argument("--out", default=None, help="dataset folder (default: <runs>/datasets/sim)")
    parser.add_argument("--tasks", nargs="+", default=["table_clear"], help="task names (table_clear, ...)")
    parser.add_argument("--env", nargs="+", default=None, metavar="MODULE:CALLABLE",
                        help="record guidance-protocol envs instead (each one's ground_truth_plan through execute_skill, "
                             "finetune_embodied/record_env.py); --tasks and --mistake-rate do not apply")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (consecutive TRAIN seeds)")
    parser.add_argument("--episodes-by-task", nargs="+", default=[], metavar="TASK=N",
                        help="more (or fewer) episodes of some tasks, e.g. table_clear=3000; the others record --episodes")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed = TRAIN_SEEDS[offset]")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="explicit TRAIN seeds (overrides --episodes)")
    parser.add_argument("--mistake-rate", type=float, default=0.2, help="probability of an injected mistake per plan step")
    parser.add_argument("--resolution", type=int, default=64, help="camera image size (pixels, square, even)")
    parser.add_argument("--fps", type=int, default=10, help="frame rate written to the dataset")
    parser.add_argument("--max-steps", type=int, default=2000, help="low-level steps per episode before giving up")
    parser.add_argument("--workers", type=int, default=1, help="recording processes")
    parser.add_argument("--pix-fmt", default="yuv444p", choices=list(PIX_FMTS),
                        help="video chroma layout (yuv420p halves colour resolution, as LeRobot records)")
    parser.add_argument("--crf", type=int, default=0, help="h264 quality, 0 (lossless in YUV) .. 51")
    parser.add_argument("--no-keep-shards", action="store_true", help="delete <out>.shards after consolidation")
    parser.add_argument("--json", default=None, help="also write the summary JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "env", None):
        from finetune_embodied.record_env import main_env

        return main_env(args)
    out = args.out or str(artifacts_root() / "datasets" / "sim")
    try:
        by_task = {}
        for item in getattr(args, "episodes_by_task", []) or []:
            task, _, n = item.partition("=")
            if not n.strip().isdigit():
                raise ValueError(f"--episodes-by-task {item!r} is not TASK=N (e.g. table_clear=3000)")
            by_task[task.strip()] = int(n)
        cfg = RecordConfig(out=out, tasks=tuple(args.tasks), seeds=tuple(args.seeds or ()), episodes_per_task=args.episodes,
                           episodes_by_task=by_task, seed_offset=args.seed_offset, mistake_rate=args.mistake_rate, resolution=args.resolution,
                           fps=args.fps, max_steps=args.max_steps, workers=args.workers,
                           keep_shards=not args.no_keep_shards, pix_fmt=args.pix_fmt, crf=args.crf)
    except ValueError as exc:
        print(f"emu-guide record: {exc}")
        return 2
    summary = record(cfg, progress=not args.no_progress)
    print(f"dataset: {summary['out']}")
    print(f"{'episodes':<22}{summary['episodes_in_dataset']} in dataset ({summary['episodes_recorded_now']} recorded now, "
          f"{summary['episodes_resumed']} resumed from shards)")
    print(f"{'mistakes injected':<22}{summary['mistakes_injected']}")
    print(f"{'throughput':<22}{summary['episodes_per_min']:.1f} episodes/min with {cfg.workers} worker(s)")
    for e in summary["episodes_excluded"]:
        print(f"excluded: {e['task']} seed {e['seed']}: {e['reason']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0
