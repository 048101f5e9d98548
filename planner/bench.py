"""``emu-guide bench``: the closed-loop benchmark on held-out seeds.

N episodes per task, for each chosen backend and decode mode (AR and DiDA side by side when both
are asked; the oracle has no decode mode and runs once), spread over worker processes. Prints a
table and writes, under ``--out`` (default ``runs/bench``):

- ``bench.json``: the command, one summary per (task, backend, decode) and every episode;
- ``success_at_k.png``: CALVIN-style curves, ``latency_hist.png``: planning latency per step;
- ``sheets/``: contact sheets (frame before | predicted subgoal | frame after) of failed episodes
  and of the first ``--sheets-per-config`` episodes of each configuration (``--sheets all``: every one).

The table's "verify false/missed" is the loop's verification from frames against the executor's
own report (the simulator's check at the skill's end): of the executed steps the executor says
failed, the share the frames judged done, and of those it says succeeded, the share judged not
done (``planner.metrics.frames_verification_rates``; "-" where the checker decided, ``--no-checker`` off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emu_guide.paths import artifacts_root

__all__ = ["add_arguments", "format_table", "main", "resolve_backends", "run_bench", "write_report"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from planner.envs import TASKS, add_instruction_argument, add_model_arguments, add_text_argument

    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"tasks (default: all of {', '.join(TASKS)})")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task and configuration")
    parser.add_argument("--backend", nargs="+", default=["auto"],
                        help="backends to compare (auto = shipped model if present, else oracle)")
    parser.add_argument("--decode", nargs="+", default=["auto"], choices=("auto", "dida", "ar"),
                        help="decode modes for model backends; 'dida ar' runs both side by side; auto (default): "
                             "the model's own (DiDA when it was DiDA-adapted, else AR)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="worker processes")
    parser.add_argument("--seed-offset", type=int, default=0, help="first held-out seed = HELDOUT_SEEDS[offset]")
    parser.add_argument("--model-path", default=None, help="model directory for model backends")
    parser.add_argument("--out", default=None, help="output folder (default: runs/bench)")
    parser.add_argument("--sheets", default="failures", choices=("all", "failures", "none"),
                        help="which episodes get a contact sheet")
    parser.add_argument("--sheets-per-config", type=int, default=2,
                        help="also write sheets for the first N episodes of each configuration")
    parser.add_argument("--time-limit", type=float, default=300.0, help="wall-clock limit per episode (s)")
    parser.add_argument("--no-checker", action="store_true",
                        help="no simulator checker: steps are judged from the frames only, as on a robot (the"
                        " model's step verifier, else its perception, else the frame vs the predicted subgoal)")
    parser.add_argument("--over-ros", action="store_true",
                        help="run every episode over ROS 2: the guidance node and the sim bridge as processes talking"
                             " over real DDS (isolated graph), scored on the same seeds with the same table and JSON;"
                             " needs rclpy (`bash scripts/ros_venv.sh` builds .ros_venv, which is then used)")
    parser.add_argument("--camera-hz", type=float, default=20.0,
                        help="--over-ros: the sim bridge's camera rate (every StepResult is followed by a fresh frame"
                             " anyway; a lower rate spares a starved host the streaming)")
    add_text_argument(parser)
    add_model_arguments(parser)
    add_instruction_argument(parser)


# -- worker side ------------------------------------------------------------------------------
_CACHE: dict[tuple[str, str, str | None], tuple[Any, Any]] = {}


def _env_and_backend(task: str, backend: str, model_path: str | None, threads: int | None,
                     trust_remote_code: bool = False) -> tuple[Any, Any]:
    from planner.envs import make_backend, make_env

    key = (task, backend, model_path)
    if key not in _CACHE:
        if backend == "oracle":
            env = make_env(task)
            _CACHE[key] = (env, make_backend("oracle", env))
        else:
            b = make_backend(backend, None, model_path=model_path, num_threads=threads, trust_remote_code=trust_remote_code)
            _CACHE[key] = (make_env(task, resolution=b.image_size[0]), b)
    return _CACHE[key]


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One episode in a worker; returns the episode dict (steps without images, no events)."""
    from PIL import Image

    from model_runtime.backends.base import DecodeOptions
    from planner.monitor import MonitorConfig
    from planner.report import contact_sheet
    from planner.runner import RunnerConfig, run_episode

    env, backend = _env_and_backend(job["task"], job["backend"], job["model_path"], job["threads"],
                                    job.get("trust_remote_code", False))
    mode = None if job["decode"] in ("auto", "oracle") else job["decode"]  # None: the model's own default
    config = RunnerConfig(decode=DecodeOptions(mode=mode), monitor=MonitorConfig(time_limit_s=job["time_limit"]),
                          instruction=job.get("instruction"),
                          use_checker=job["use_checker"], grounded_decoding=job["grounded_decoding"])
    result = run_episode(env, backend, job["seed"], config)
    d = result.to_dict(with_steps=True)
    d.pop("events", None)
    d["decode_mode"] = job["decode"]
    d["task"] = job["task"]  # as asked (a short name, a Gymnasium id or module:callable), for grouping
    sheet = job["sheet"] == "all" or (job["sheet"] == "failures" and not result.success) or job["first"]
    if sheet and job["sheet"] != "none":
        path = Path(job["sheet_dir"]) / f"{job['task']}_{job['backend']}_{job['decode']}_seed{job['seed']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(contact_sheet(result)).save(path)
        d["contact_sheet"] = str(path)
    return d


# -- driver -----------------------------------------------------------------------------------
def _configs(backends: list[str], decodes: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for b in backends:
        for m in (["oracle"] if b == "oracle" else decodes):
            if (b, m) not in out:
                out.append((b, m))
    return out


def run_bench(
    tasks: list[str],
    episodes: int,
    backends: list[str],
    decodes: list[str],
    workers: int,
    out: Path,
    seed_offset: int = 0,
    model_path: str | None = None,
    sheets: str = "failures",
    sheets_per_config: int = 2,
    time_limit: float = 300.0,
    progress: bool = True,
    use_checker: bool = True,
    grounded_decoding: bool = False,
    trust_remote_code: bool = False,
    instruction: str | None = None,
) -> dict[str, Any]:
    """Run every (task, backend, decode, seed) episode; write bench.json and the plots; return the JSON."""
    from tqdm import tqdm

    from planner.envs import env_id
    from sim_envs.seeds import seeds_for

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    for t in tasks:
        env_id(t)  # unknown task -> ValueError naming the valid ones
    seeds = seeds_for("heldout", episodes, seed_offset)
    out.mkdir(parents=True, exist_ok=True)
    configs = _configs(backends, decodes)
    jobs = [
        {"task": t, "backend": b, "decode": m, "seed": s, "model_path": model_path, "time_limit": time_limit,
         "sheet": sheets, "first": i < sheets_per_config, "sheet_dir": str(out / "sheets"), "use_checker": use_checker,
         "grounded_decoding": grounded_decoding, "trust_remote_code": trust_remote_code, "instruction": instruction,
         "threads": None if workers == 1 else max(1, (os.cpu_count() or 1) // workers)}
        for t in tasks for (b, m) in configs for i, s in enumerate(seeds)
    ]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="bench", unit="ep", disable=not progress, file=sys.stderr)
    if workers == 1:
        for job in jobs:
            results.append(_run_job(job))
            bar.update(1)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fresh interpreters: safe with torch threads and any backend
        with ctx.Pool(workers) as pool:
            for d in pool.imap_unordered(_run_job, jobs, chunksize=1):
                results.append(d)
                bar.update(1)
                bar.set_postfix(success=f"{sum(r['success'] for r in results) / len(results):.2f}")
    bar.close()
    return write_report(out, results, tasks, configs, seeds, workers, time.perf_counter() - t0,
                        use_checker=use_checker, grounded_decoding=grounded_decoding)


def write_report(out: Path, results: list[dict[str, Any]], tasks: list[str], configs: list[tuple[str, str]],
                 seeds: list[int], workers: int, wall: float, use_checker: bool = True, grounded_decoding: bool = False,
                 extra: dict[str, Any] | None = None,
                 summary_extra: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Summaries per (task, backend, decode), bench.json and the plots. The in-process bench and the
    over-ROS one (``emu_ros.bench_over_ros``) write the same shape; the latter adds its own keys to
    the report (``extra``) and to each summary (``summary_extra(episodes)``)."""
    from planner.metrics import aggregate

    summaries = []
    for t in tasks:
        for b, m in configs:
            eps = sorted((r for r in results if r["task"] == t and r["backend"] == b and r["decode_mode"] == m),
                         key=lambda r: r["seed"])
            if not eps:  # the backend's registry name may differ from the asked one (auto)
                continue
            summaries.append({"task": t, "backend": b, "decode": m, **aggregate(eps),
                              **(summary_extra(eps) if summary_extra else {})})
    report = {
        "command": "emu-guide bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "seeds": {"split": "heldout", "first": seeds[0], "count": len(seeds)},
        "workers": workers,
        "monitor": "checker" if use_checker else "frames only (frame vs predicted subgoal)",
        "text": "grounded decoding (names the detector sees)" if grounded_decoding else "free",
        "wall_s": wall,
        **(extra or {}),
        "summaries": summaries,
        "episodes": sorted(results, key=lambda r: (r["task"], r["backend"], r["decode_mode"], r["seed"])),
    }
    (out / "bench.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    _plots(summaries, results, out)
    return report


def _plots(summaries: list[dict[str, Any]], results: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(s["task"] for s in summaries))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for s in (s for s in summaries if s["task"] == task):
            pts = [(k, v) for k, v in enumerate(s["success_at_k"], start=1) if v is not None]
            ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", ms=3, label=f"{s['backend']}/{s['decode']}")
        ax.set_title(f"{task}: success@k (of plans with >= k steps)", fontsize=10)
        ax.set_xlabel("k consecutive steps completed")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("fraction of episodes")
    fig.tight_layout()
    fig.savefig(out / "success_at_k.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    groups: dict[str, list[float]] = {}
    for r in results:
        lat = [s["latency_ms"]["total"] for s in r["steps"] if "total" in s["latency_ms"]]
        groups.setdefault(f"{r['backend']}/{r['decode_mode']}", []).extend(lat)
    for label, vals in groups.items():
        if vals:
            ax.hist(vals, bins=40, alpha=0.6, label=f"{label} (n={len(vals)})")
    ax.set_xlabel("planning latency per step (ms)")
    ax.set_ylabel("steps")
    ax.set_title("next-step latency (backend.next_step)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_hist.png", dpi=110)
    plt.close(fig)


def format_table(summaries: list[dict[str, Any]]) -> str:
    head = ("task", "backend", "decode", "eps", "success", "all-ok", "steps done/plan", "text acc", "goal acc",
            "PSNR dB", "pos err px", "lat p50", "lat p95", "replans", "verify false/missed")
    rows = [head]

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for s in summaries:
        rows.append((s["task"], s["backend"], s["decode"], str(s["episodes"]), f(s["success_rate"], ".1%"),
                     f(s["all_steps_correct_rate"], ".1%"),
                     f"{s['avg_completed_steps']:.2f}/{s['avg_gt_steps']:.2f}", f(s["step_text_exact"], ".1%"),
                     f(s["step_goal_accuracy"], ".1%"), f(s["subgoal_psnr_db"], ".1f"),
                     f(s["subgoal_pos_error_px"], ".2f"), f(s["latency_ms_p50"], ".1f"),
                     f(s["latency_ms_p95"], ".1f"), f(s["replans_per_episode"], ".2f"),
                     f"{f(s.get('verify_false_done'), '.3f')}/{f(s.get('verify_missed_done'), '.3f')}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _check_instruction(args: argparse.Namespace, backends: list[str]) -> str | None:
    """The user's --instruction against every model backend asked for (before any worker starts)."""
    from planner.envs import check_user_instruction, make_backend

    for name in backends:
        if name == "oracle":
            continue
        backend = make_backend(name, None, model_path=args.model_path, trust_remote_code=args.trust_remote_code)
        try:
            for task in args.tasks:
                error = check_user_instruction(backend, args.instruction, task)
                if error:
                    return error
        finally:
            backend.close()
    return None


def resolve_backends(names: list[str]) -> list[str]:
    """The registry names of ``--backend`` (auto -> the shipped model, else the oracle with a notice)."""
    from planner.envs import resolve_backend

    backends = []
    for b in names:
        name, notice = resolve_backend(b)
        if notice:
            print(notice, file=sys.stderr)
        backends.append(name)
    return backends


def main(args: argparse.Namespace) -> int:
    if getattr(args, "over_ros", False):  # `emu-guide bench --over-ros` runs emu_ros.bench_over_ros (emu_guide/cli.py)
        print("error: --over-ros is run by emu_ros.bench_over_ros through `emu-guide bench --over-ros`", file=sys.stderr)
        return 2

    backends = resolve_backends(args.backend)
    out = Path(args.out) if args.out else artifacts_root() / "bench"
    if args.instruction is not None:
        error = _check_instruction(args, backends)
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        report = run_bench(args.tasks, args.episodes, backends, args.decode, args.workers, out,
                           seed_offset=args.seed_offset, model_path=args.model_path, sheets=args.sheets,
                           sheets_per_config=args.sheets_per_config, time_limit=args.time_limit,
                           use_checker=not args.no_checker, grounded_decoding=args.text == "grounded",
                           trust_remote_code=args.trust_remote_code, instruction=args.instruction)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"text decoding: {report['text']}")
    print(format_table(report["summaries"]))
    print(f"\n{len(report['episodes'])} episodes in {report['wall_s']:.1f} s with {args.workers} workers; "
          f"wrote {out / 'bench.json'}, success_at_k.png, latency_hist.png, sheets/")
    return 0
