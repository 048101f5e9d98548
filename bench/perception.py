"""Perception benchmark: does a model say which objects are on the table, where, and what it holds?

    python bench/perception.py [--model-path model_runtime/default_model] [--tasks table_clear sort_blocks fold_cloth]
                               [--episodes 10] [--frames-per-episode 8] [--mistake-rate 0.2] [--out runs/bench/perception.json]

Held-out seeds only (``sim_envs.seeds``, "heldout" split). Each episode runs the scripted expert
(with injected mistakes, as the recordings do) and takes the frames at its step boundaries (where
the guidance loop asks the model for the next step: frame 0, then each frame where a (sub)step was
just completed), at most ``--frames-per-episode`` of them, evenly spread. At each such frame the
model answers one guidance step (``TorchBackend.next_step``, the current instruction, the done
steps as history) and its ``PlanStep.perception`` is compared with the ground truth of that frame
(``finetune_embodied.record.scene_perception``: what ``emu-guide record`` stores as the target).

Metrics (micro-averaged over frames):

- ``object_f1``: objects matched by name, colour and kind both right (a multiset match);
  precision/recall alongside;
- ``colour_f1``: the same on colours alone (a diagnostic: is the model reading at all?);
- ``cell_acc``: among matched objects, the fraction whose cell (left/middle/right x back/front)
  is right (duplicates of a name are paired cell-first);
- ``holding_acc``: the held object (or nothing) right;
- ``exact``: the whole perception right (every object, cell and the held object);
- ``parse_fail``: answers whose perception did not parse (the backend's error; counted as empty).

A model without the "perceive" answer format (guidance.json has no ``"answer": "perceive"``, e.g.
the shipped v3 model) has no perception: the script says so and scores it as empty (F1 0).
Prints a table and writes JSON (``--out``). The ground truth reads simulator state; the model
sees only the frame, the instruction and its done steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def boundary_frames(task: str, seed: int, mistake_rate: float, resolution: int, limit: int) -> tuple[str, list[dict]]:
    """(instruction, [{"image", "history", "truth"}]) at the expert's step boundaries of one episode."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the envs)
    from finetune_embodied.record import scene_perception, task_env_ids
    from sim_envs.expert import ExpertError, ScriptedExpert

    env = gym.make(task_env_ids()[task], resolution=resolution, max_episode_steps=2000)
    obs, _ = env.reset(seed=seed)
    u = env.unwrapped
    expert = ScriptedExpert(env, mistake_rate=mistake_rate, seed=seed)
    h, w = obs["image"].shape[:2]
    frames = [{"image": obs["image"], "history": [], "truth": scene_perception(u, w, h)}]
    done: list[str] = []
    label = None
    try:
        while not expert.done:
            action, _, text = expert.next_action()
            if label is not None and text != label:  # the previous (sub)step just ended: a boundary
                done.append(label)  # (the env is still in the state of the last observation)
                frames.append({"image": obs["image"], "history": list(done), "truth": scene_perception(u, w, h)})
            label = text
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    except ExpertError:
        pass
    instruction = u.instruction
    env.close()
    if len(frames) > limit:
        keep = np.unique(np.linspace(0, len(frames) - 1, limit).round().astype(int))
        frames = [frames[i] for i in keep]
    return instruction, frames


def score_frame(pred: dict | None, truth: dict) -> dict:
    """Counts for one frame: tp/fp/fn on names, matched/cell_ok, holding and exact."""
    gt = [(o["name"], o["cell"]) for o in truth["objects"]]
    pr = [(o["name"], o["cell"]) for o in (pred or {}).get("objects", [])]
    tp = sum((Counter(n for n, _ in gt) & Counter(n for n, _ in pr)).values())
    colour = [n.split()[-2] if len(n.split()) > 1 else n for n, _ in gt]
    colour_pr = [n.split()[-2] if len(n.split()) > 1 else n for n, _ in pr]
    ctp = sum((Counter(colour) & Counter(colour_pr)).values())
    exact_pairs = sum((Counter(gt) & Counter(pr)).values())  # same name and cell: paired first
    held_ok = pred is not None and pred.get("holding") == truth["holding"]
    return {"tp": tp, "fp": len(pr) - tp, "fn": len(gt) - tp, "ctp": ctp, "cfp": len(pr) - ctp, "cfn": len(gt) - ctp,
            "matched": tp, "cell_ok": exact_pairs,
            "holding_ok": int(held_ok), "exact": int(held_ok and Counter(gt) == Counter(pr))}


def summarise(counts: list[dict]) -> dict:
    c = {k: sum(x[k] for x in counts) for k in ("tp", "fp", "fn", "ctp", "cfp", "cfn", "matched", "cell_ok",
                                                 "holding_ok", "exact")}
    n = len(counts)
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    cf1 = 2 * c["ctp"] / (2 * c["ctp"] + c["cfp"] + c["cfn"]) if c["ctp"] else 0.0
    if c["tp"] + c["fp"] + c["fn"] == 0:  # nothing to see (FoldCloth) and nothing said: perfect
        p = r = f1 = cf1 = 1.0
    return {"frames": n, "object_precision": p, "object_recall": r, "object_f1": f1, "colour_f1": cf1,
            "cell_acc": c["cell_ok"] / c["matched"] if c["matched"] else 0.0,
            "holding_acc": c["holding_ok"] / n if n else 0.0, "exact": c["exact"] / n if n else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default=str(ROOT / "model_runtime" / "default_model"))
    ap.add_argument("--tasks", nargs="+", default=["table_clear", "sort_blocks", "fold_cloth"])
    ap.add_argument("--episodes", type=int, default=10, help="held-out episodes per task")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed = HELDOUT_SEEDS[offset]")
    ap.add_argument("--frames-per-episode", type=int, default=8)
    ap.add_argument("--mistake-rate", type=float, default=0.2)
    ap.add_argument("--decode", default="dida", choices=["ar", "dida"],
                    help="subgoal decoding; the perception is greedy text before it, the same either way, so DiDA"
                         " (forced on next-token weights) only makes the run faster")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "perception.json"))
    args = ap.parse_args(argv)

    import torch

    from emu_guide.types import Frame, PlanStep
    from model_runtime.backends.base import BackendError, DecodeOptions, load_backend
    from sim_envs.seeds import seeds_for

    torch.set_num_threads(args.threads)
    backend = load_backend("torch", model_path=args.model_path)
    fmt = getattr(backend, "answer_format", "step")
    if fmt != "perceive":
        print(f"{args.model_path}: answer format {fmt!r} has no perception; every frame scores as empty")
    res = backend.image_size[0]
    seeds = seeds_for("heldout", args.episodes, args.seed_offset)
    rows, per_frame = {}, []
    t0 = time.perf_counter()
    for task in args.tasks:
        counts, fails = [], 0
        for seed in seeds:
            instruction, frames = boundary_frames(task, seed, args.mistake_rate, res, args.frames_per_episode)
            for k, f in enumerate(frames):
                pred, error = None, ""
                if fmt == "perceive":
                    history = [PlanStep(index=i, text=t) for i, t in enumerate(f["history"])]
                    try:
                        step = backend.next_step(Frame(image=f["image"]), instruction, history,
                                                 DecodeOptions(mode=args.decode, force_dida=True))
                        pred = step.perception
                    except BackendError as exc:
                        fails += 1
                        error = str(exc)
                s = score_frame(pred, f["truth"])
                counts.append(s)
                per_frame.append({"task": task, "seed": seed, "frame": k, "truth": f["truth"], "pred": pred,
                                  "error": error, **s})
        rows[task] = {**summarise(counts), "parse_fail": fails}
    rows["all"] = {**summarise([p for p in per_frame]), "parse_fail": sum(r["parse_fail"] for r in rows.values())}
    wall = time.perf_counter() - t0
    print(f"perception on held-out frames: {args.model_path} (answer format {fmt!r}), {args.episodes} episodes per task,"
          f" <= {args.frames_per_episode} boundary frames each, {wall:.0f} s")
    head = (f"{'task':<12}{'frames':>7}{'F1':>7}{'prec':>7}{'recall':>7}{'colourF1':>9}{'cell':>7}{'holding':>8}"
            f"{'exact':>7}{'fail':>6}")
    print(head)
    for task, r in rows.items():
        print(f"{task:<12}{r['frames']:>7}{r['object_f1']:>7.3f}{r['object_precision']:>7.3f}{r['object_recall']:>7.3f}{r['colour_f1']:>9.3f}"
              f"{r['cell_acc']:>7.3f}{r['holding_acc']:>8.3f}{r['exact']:>7.3f}{r['parse_fail']:>6}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in per_frame:  # JSON-friendly ground truth (pixels kept for inspection)
        p["truth"] = {"objects": p["truth"]["objects"], "holding": p["truth"]["holding"]}
    out.write_text(json.dumps({"model_path": args.model_path, "answer_format": fmt, "args": vars(args),
                               "wall_s": wall, "rows": rows, "frames": per_frame}, indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
