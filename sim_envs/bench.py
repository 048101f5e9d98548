"""``emu-guide bench-sim``: simulation speed per env and resolution, and the expert's success rate.

Speed: low-level ``env.step`` calls per second (each one renders the observation image), timed
around ``env.step`` only, as steps per CPU-second of the stepping thread (``time.thread_time``:
what one core delivers, even on a shared machine) and per wall-clock second, on one core (``cv2.setNumThreads(1)``; torch is never imported), for
two action streams: the scripted expert's (the recording workload: objects grasped, carried,
released, cloth folded) and uniform random actions. ``render ms`` is the cost of composing one
frame from the cached static layer (what a step pays), ``redraw ms`` the cost of redrawing the
static layer too (paid when something is grasped, released or folded), ``reset ms`` a reset
(these three in CPU milliseconds of the thread).

Success: the scripted expert on held-out seeds, through the low-level interface (with and
without injected mistakes) and through the skill interface (``solve``).

Prints tables, writes JSON (default runs/bench/sim.json) and a PNG of sample frames.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_STEPS_PER_S = 2000.0  # at 128 px, one core (issue 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--envs", nargs="+", default=None, help="env ids (default: all registered)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--steps", type=int, default=3000, help="low-level steps timed per env, resolution and stream")
    parser.add_argument("--success-seeds", type=int, default=100, help="held-out seeds per env for the success rate (0: skip)")
    parser.add_argument("--success-resolution", type=int, default=64)
    parser.add_argument("--mistake-rate", type=float, default=0.3, help="mistake rate of the second expert run")
    parser.add_argument("--out", type=str, default=None, help="JSON path (default: runs/bench/sim.json)")
    parser.add_argument("--png", type=str, default=None, help="sample-frame PNG (default: next to the JSON)")


def _time_expert(env: Any, steps: int, seed0: int) -> dict[str, float]:
    from sim_envs.expert import ScriptedExpert

    u = env.unwrapped
    step_t, step_cpu, n, seed = 0.0, 0.0, 0, seed0
    render_t, redraw_t, reset_t, n_render, n_reset = 0.0, 0.0, 0.0, 0, 0
    while n < steps:
        t = time.thread_time()
        env.reset(seed=seed)
        reset_t += time.thread_time() - t
        n_reset += 1
        seed += 1
        expert = ScriptedExpert(env)
        while n < steps and not expert.done:
            action, _, _ = expert.next_action()
            c, t = time.thread_time(), time.perf_counter()
            env.step(action)
            step_t += time.perf_counter() - t
            step_cpu += time.thread_time() - c
            n += 1
            if n % 10 == 0:  # frame composition from the cached static layer, then a full redraw
                u._frame = None
                t = time.thread_time()
                u.render()
                t1 = time.thread_time()
                u._frame, u._static = None, None
                u.render()
                render_t += t1 - t
                redraw_t += time.thread_time() - t1
                n_render += 1
    return {
        "expert_steps_per_s": n / step_t,
        "expert_steps_per_cpu_s": n / step_cpu,
        "render_ms": 1000 * render_t / max(1, n_render),
        "redraw_ms": 1000 * redraw_t / max(1, n_render),
        "reset_ms": 1000 * reset_t / n_reset,
    }


def _time_random(env: Any, steps: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, size=(steps, 4)).astype(np.float32)
    env.reset(seed=seed)
    total, cpu = 0.0, 0.0
    for a in actions:
        c, t = time.thread_time(), time.perf_counter()
        _, _, terminated, truncated, _ = env.step(a)
        total += time.perf_counter() - t
        cpu += time.thread_time() - c
        if terminated or truncated:
            env.reset()
    return {"random_steps_per_s": steps / total, "random_steps_per_cpu_s": steps / cpu}


def _success(env_id: str, seeds: list[int], resolution: int, mistake_rate: float) -> dict[str, Any]:
    import gymnasium as gym
    from tqdm import tqdm

    from sim_envs.expert import ExpertError, ScriptedExpert, solve

    env = gym.make(env_id, resolution=resolution)
    ok = {"expert": 0, "expert_mistakes": 0, "solve": 0}
    failures: list[str] = []  # "<run> seed <seed>: <why>", for the JSON
    for seed in tqdm(seeds, desc=f"success {env_id}", leave=False):
        for run, rate in (("expert", 0.0), ("expert_mistakes", mistake_rate)):
            env.reset(seed=seed)
            try:
                good = ScriptedExpert(env, mistake_rate=rate, seed=seed).run()
            except ExpertError as exc:
                good = False
                failures.append(f"{run} seed {seed}: {exc}")
            else:
                if not good:
                    failures.append(f"{run} seed {seed}: steps_done {env.unwrapped.steps_done()}")
            ok[run] += good
        env.reset(seed=seed)
        good = solve(env)
        ok["solve"] += good
        if not good:
            failures.append(f"solve seed {seed}: steps_done {env.unwrapped.steps_done()}")
    env.close()
    return {**{k: v / len(seeds) for k, v in ok.items()}, "failures": failures}


def _sample_png(env_ids: list[str], path: Path) -> None:
    """One row per env: the first frame of four held-out episodes plus two subgoal images."""
    import cv2
    import gymnasium as gym

    from sim_envs.seeds import seeds_for

    rows = []
    for env_id in env_ids:
        env = gym.make(env_id, resolution=128)
        tiles = []
        for seed in seeds_for("heldout", 4):
            obs, _ = env.reset(seed=seed)
            tiles.append(obs["image"])
        sub = env.unwrapped.subgoal_images()
        tiles += [sub[len(sub) // 2], sub[-1]]
        rows.append(np.concatenate(tiles, axis=1))
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def main(args: argparse.Namespace) -> int:
    import cv2

    cv2.setNumThreads(1)  # one core, as the target says
    import gymnasium as gym

    import sim_envs
    from emu_guide.paths import artifacts_root
    from sim_envs.seeds import HELDOUT_SEEDS, seeds_for

    env_ids = list(args.envs or sim_envs.ENV_IDS)
    unknown = [e for e in env_ids if e not in sim_envs.ENV_IDS]
    if unknown:
        raise ValueError(f"unknown env ids {unknown}; registered: {', '.join(sim_envs.ENV_IDS)}")
    if args.steps < 100:
        raise ValueError(f"--steps must be >= 100, got {args.steps}")
    out = Path(args.out) if args.out else artifacts_root() / "bench" / "sim.json"
    png = Path(args.png) if args.png else out.with_name(out.stem + "_frames.png")

    speed = []
    print("steps/s per CPU-second of the stepping thread (wall-clock steps/s in brackets: lower when the machine is shared)")
    print(f"{'env':<24} {'res':>4} {'expert steps/s':>22} {'random steps/s':>22} {'render ms':>10} {'redraw ms':>10} {'reset ms':>9}")
    for env_id in env_ids:
        for res in args.resolutions:
            env = gym.make(env_id, resolution=res)
            row = {"env": env_id, "resolution": res, **_time_expert(env, args.steps, HELDOUT_SEEDS.start)}
            row.update(_time_random(env, args.steps, HELDOUT_SEEDS.start))
            env.close()
            speed.append(row)
            expert = f"{row['expert_steps_per_cpu_s']:.0f} ({row['expert_steps_per_s']:.0f})"
            rand = f"{row['random_steps_per_cpu_s']:.0f} ({row['random_steps_per_s']:.0f})"
            print(
                f"{env_id:<24} {res:>4} {expert:>22} {rand:>22} "
                f"{row['render_ms']:>10.3f} {row['redraw_ms']:>10.3f} {row['reset_ms']:>9.2f}"
            )
    at128 = [r for r in speed if r["resolution"] == 128]
    worst = min((min(r["expert_steps_per_cpu_s"], r["random_steps_per_cpu_s"]) for r in at128), default=None)
    if worst is not None:
        verdict = "meets" if worst >= TARGET_STEPS_PER_S else "MISSES"
        print(f"slowest at 128 px: {worst:.0f} steps per CPU-second -> {verdict} the {TARGET_STEPS_PER_S:.0f} steps/s target")

    success = []
    if args.success_seeds > 0:
        seeds = seeds_for("heldout", args.success_seeds)
        print(f"\nexpert success on {len(seeds)} held-out seeds (resolution {args.success_resolution})")
        print(f"{'env':<24} {'expert':>8} {'expert+mistakes':>16} {'solve (skills)':>15}")
        for env_id in env_ids:
            rates = _success(env_id, seeds, args.success_resolution, args.mistake_rate)
            success.append({"env": env_id, "seeds": len(seeds), "mistake_rate": args.mistake_rate, **rates})
            print(f"{env_id:<24} {rates['expert']:>8.1%} {rates['expert_mistakes']:>16.1%} {rates['solve']:>15.1%}")

    _sample_png(env_ids, png)
    result = {
        "command": "emu-guide bench-sim",
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "threads": "cv2.setNumThreads(1); numpy single-threaded for these sizes; torch not imported",
        "target_steps_per_s_at_128": TARGET_STEPS_PER_S,
        "speed": speed,
        "success": success,
        "frames_png": str(png),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out} and {png}")
    return 0
