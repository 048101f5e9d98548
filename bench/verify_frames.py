"""Frame-verification benchmark: from the post-step frame alone, can the loop tell a step that
happened from one that did not? And what does the perception cost per step?

    python bench/verify_frames.py [--model-path DIR] [--tasks table_clear sort_blocks fold_cloth] [--episodes 5]
                                  [--seed-offset 0] [--mistake-rate 1.0] [--timing-frames 6] [--out runs/bench/verify_frames.json]

Held-out seeds only. Each episode runs the scripted expert with injected mistakes (a wrong item
picked, the item dropped on the way: what ``emu-guide record`` injects) and cuts it into segments.
Each is a verification case with the frames before and after it and the plan step it stands for:
a plan segment with its goal happened when the simulator's checker says so at its end; a mistake
(and the expert's "plan" segment that drops the item) is that plan step NOT happening. Recoveries
are skipped. The decision is ``planner.verify.judge_perception`` (what the loop runs) on:

- ``truth``: ground-truth perceptions (``sim_envs.perception``): the decision rule's own ceiling;
- ``model``: the model's perceptions (``TorchBackend.perceive``), before and after, each with the
  plan steps confirmed when the loop asks: before the step for both (the verifier perceives the
  post-step frame before it confirms the step; until session 10 the post-step frame had the step in
  its history, which hid a model that reads the folds from the history instead of the frame);
- ``check``: models with a step verifier (``step_verifier/``, model_runtime/step_verifier.py): its
  judgement of whether the plan step's sentence happened between the frame before and the frame
  after (``TorchBackend.check_step``);
- ``both``: models with both (since session 14: a scene perceiver and a step verifier): the
  verifier's decision, on a pick overruled where the perceiver is sure whether the asked object
  is held, and a fold or stack done when the perception reads it done
  (``planner.verify.decide_by_both``), which is what the loop decides by for such a model.

Metrics per task: ``false_done`` (of the steps that did not happen, the fraction judged done),
``missed_done`` (of those that happened, judged not done), ``cannot_tell`` (perception could not
decide: the loop then falls back to pixels; not counted in the two rates). Costs: every step verifier call,
and on the first ``--timing-frames`` post-step frames per episode the perception-only decode (``perceive``), the
next step decoded whole, and the next step with that perception given (teacher-forced, as the
loop reuses it). The subgoal is decoded by DiDA (forced on next-token weights: timing only; the
perception is greedy text before the image, the same either way). Prints a table, writes JSON (and,
with step-verifier rows, a picture of its probabilities beside it: ``<out>.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def segment_cases(task: str, seed: int, mistake_rate: float = 1.0, resolution: int = 64) -> dict:
    """The expert's episode as verification cases: ``{"instruction", "frames": [{"image", "truth",
    "history"}], "cases": [{"kind", "text", "goal", "happened", "before", "after"}]}``; case i goes
    from frame ``before`` to frame ``after``; ``history`` the plan sentences confirmed by then."""
    from model_runtime.prompt import perception_in_reading_order
    from planner.envs import make_env
    from sim_envs.expert import ExpertError, ScriptedExpert
    from sim_envs.perception import visible_objects

    env = make_env(task, resolution=resolution)
    env.reset(seed=seed)
    sim = env.unwrapped
    expert = ScriptedExpert(env, mistake_rate=mistake_rate, seed=seed)
    frames, segments, done = [], [], []

    def boundary() -> None:  # the frame now: the end of the last segment, the start of the next
        seen = visible_objects(sim)
        truth = perception_in_reading_order(seen["objects"], seen["holding"], sim.camera.width, sim.camera.height)
        frames.append({"image": sim.render(), "truth": truth, "history": list(done)})

    def close(seg) -> None:
        ok = bool(seg.goal is not None and sim.check_step(seg.goal))
        segments.append((seg, ok))
        if seg.kind == "plan" and ok:
            done.append(seg.text)

    current = None
    try:
        for _ in range(20000):
            if expert.done:
                break
            action, _, _ = expert.next_action()
            if expert.segment is not current:
                if current is not None:
                    close(current)
                current = expert.segment
                boundary()
            env.step(action)
    except ExpertError:
        pass
    if current is not None:
        close(current)
        boundary()
    instruction = sim.instruction
    env.close()
    cases = []
    for i, (seg, ok) in enumerate(segments):
        if seg.kind == "recovery":
            continue
        k = seg.step_index if seg.step_index >= 0 else next(s.step_index for s, _ in segments[i:] if s.step_index >= 0)
        happened = ok if (seg.kind == "plan" and seg.goal is not None) else False
        cases.append({"kind": seg.kind, "text": seg.text, "plan_text": expert.plan[k].text, "goal": expert.plan[k].goal,
                      "happened": happened, "before": i, "after": i + 1})
    return {"instruction": instruction, "frames": frames, "cases": cases}


def perceptions_as_the_loop_asks(ep: dict, perceive) -> tuple[list, list[tuple]]:
    """``perceive(image, history)`` of every boundary frame with the plan steps confirmed by then (the
    "before" of the next case: the step's own answer starts with it), and per case the pair (before,
    after): the loop's verifier perceives the post-step frame before it confirms the step, so with
    the history of the frame the step was planned on (a frame is perceived again where that differs)."""
    seen = [perceive(f["image"], f["history"]) for f in ep["frames"]]
    pairs = []
    for c in ep["cases"]:
        b, a = ep["frames"][c["before"]], ep["frames"][c["after"]]
        after = seen[c["after"]] if a["history"] == b["history"] else perceive(a["image"], b["history"])
        pairs.append((seen[c["before"]], after))
    return seen, pairs


def _rates(rows: list[dict]) -> dict:
    happened = [r for r in rows if r["happened"] and r["done"] is not None]
    not_happened = [r for r in rows if not r["happened"] and r["done"] is not None]
    return {
        "cases": len(rows), "happened": sum(r["happened"] for r in rows),
        "false_done": sum(r["done"] for r in not_happened) / max(1, len(not_happened)),
        "missed_done": sum(not r["done"] for r in happened) / max(1, len(happened)),
        "cannot_tell": sum(r["done"] is None for r in rows) / max(1, len(rows)),
    }


def plot_step_checks(cases: list[dict], path: Path) -> bool:
    """Per task, the step verifier's P(happened) on the steps that happened and on those that did not,
    with the threshold: how far apart the two are. False (nothing written) without ``check`` rows."""
    rows = [c for c in cases if c["source"] == "check" and c.get("p_happened") is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, task in zip(axes[0], tasks):
        for happened, colour, label in ((True, "tab:green", "happened"), (False, "tab:red", "did not")):
            p = [r["p_happened"] for r in rows if r["task"] == task and r["happened"] == happened]
            ax.hist(p, bins=bins, alpha=0.6, color=colour, label=f"{label} ({len(p)})")
        thr = rows[0].get("threshold", 0.5)
        ax.axvline(thr, color="k", lw=1, ls="--")
        ax.set(title=task, xlabel="P(happened)", ylabel="steps")
        ax.legend(fontsize=8)
    fig.suptitle("step verifier on held-out recorded steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default=None, help="a 'perceive' model directory (none: ground truth only)")
    ap.add_argument("--tasks", nargs="+", default=["table_clear", "sort_blocks", "fold_cloth"])
    ap.add_argument("--episodes", type=int, default=5, help="held-out episodes per task")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed = HELDOUT_SEEDS[offset]")
    ap.add_argument("--mistake-rate", type=float, default=1.0, help="mistakes injected per plan step")
    ap.add_argument("--timing-frames", type=int, default=6, help="post-step frames per episode timed both ways")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "verify_frames.json"))
    args = ap.parse_args(argv)

    import torch

    from emu_guide.types import Frame, PlanStep
    from model_runtime.backends.base import BackendError, DecodeOptions, load_backend
    from planner.verify import decide_by_both, held_probability, judge_perception
    from sim_envs.seeds import seeds_for

    torch.set_num_threads(args.threads)
    backend = load_backend("torch", model_path=args.model_path) if args.model_path else None
    perceives = backend is not None and getattr(backend, "perceives", False)
    checks = backend is not None and getattr(backend, "checks", False)
    if backend is not None and not (perceives or checks):
        print(f"error: {args.model_path} has no scene perceiver, does not answer in the 'perceive' format and has no"
              " step verifier: nothing to verify with", file=sys.stderr)
        return 2
    res = backend.image_size[0] if backend is not None else 64
    opts = DecodeOptions(mode="dida", force_dida=True)
    seeds = seeds_for("heldout", args.episodes, args.seed_offset)
    table, cases_out, costs = {}, [], {"perceive": [], "tokens": [], "step_whole": [], "step_given": [], "check": []}
    t0 = time.perf_counter()
    for task in args.tasks:
        rows = {"truth": [], "model": [], "check": [], "both": []}
        for seed in seeds:
            ep = segment_cases(task, seed, args.mistake_rate, res)

            def perceive(image: np.ndarray, done: list[str], instruction: str = ep["instruction"]):
                p = backend.perceive(Frame(image), instruction, [PlanStep(i, t) for i, t in enumerate(done)], opts)
                costs["perceive"].append(p.timings_ms["total"])
                costs["tokens"].append(p.timings_ms.get("tokens", 0.0))  # a scene perceiver decodes no tokens
                return p

            seen, pairs = perceptions_as_the_loop_asks(ep, perceive) if perceives else ([], [])
            for i, c in enumerate(ep["cases"]):
                b, a = ep["frames"][c["before"]], ep["frames"][c["after"]]
                row = {"task": task, "seed": seed, "kind": c["kind"], "text": c["text"], "happened": c["happened"],
                       "goal": c["goal"].to_dict()}
                done, why = judge_perception(c["goal"], a["truth"], b["truth"], c["text"])
                rows["truth"].append({**row, "done": done, "why": why})
                if checks:  # the loop asks about the step it planned: the plan step's sentence
                    judged = backend.check_step(Frame(b["image"]), Frame(a["image"]), c["plan_text"])
                    costs["check"].append(judged.ms)
                    rows["check"].append({**row, "done": judged.happened, "p_happened": judged.p_happened,
                                          "threshold": judged.threshold,
                                          "why": f"asked about {c['plan_text']!r}",
                                          "unknown_words": judged.unknown_words})
                if perceives:
                    pb, pa = pairs[i]
                    done, why = judge_perception(c["goal"], pa.perception, pb.perception, c["text"])
                    if pa.perception is None:
                        why = f"perception does not parse: {pa.error}"
                    rows["model"].append({**row, "done": done, "why": why, "perceived": pa.text,
                                          "p_held_asked": held_probability(pa.perception, c["goal"].object)})
                if perceives and checks:  # what the loop decides with both (planner.verify.FrameVerifier)
                    rows["both"].append({**row, "done": decide_by_both(rows["check"][-1]["done"], c["goal"].verb,
                                                                        rows["model"][-1]["p_held_asked"], done)})
            if perceives:  # the next step after a post-step frame: decoded whole vs perception given
                for j, (f, p) in enumerate(list(zip(ep["frames"][1:], seen[1:]))[: args.timing_frames]):
                    if p.perception is None:
                        continue
                    history = [PlanStep(i, t) for i, t in enumerate(f["history"])]
                    ways = [("step_whole", opts), ("step_given", DecodeOptions(mode="dida", force_dida=True,
                                                                               perception=p.text))]
                    timed = {}
                    try:
                        for name, o in (ways if j % 2 == 0 else ways[::-1]):  # alternate which runs first
                            timed[name] = backend.next_step(Frame(f["image"]), ep["instruction"], history, o)
                    except BackendError:
                        continue
                    for name, step in timed.items():
                        costs[name].append(step.timings_ms["total"])
        table[task] = {k: _rates(v) for k, v in rows.items() if v}
        cases_out += [{"source": k, **r} for k, v in rows.items() for r in v]
    wall = time.perf_counter() - t0
    load = os.getloadavg()[0]  # timings on a shared host: say how shared
    print(f"frame verification on held-out steps ({args.episodes} episodes per task, mistake rate {args.mistake_rate}),"
          f" model {args.model_path or '-'}, {wall:.0f} s, load average {load:.1f}")
    print(f"{'task':<12}{'source':<8}{'cases':>6}{'happened':>9}{'false done':>11}{'missed done':>12}{'cannot tell':>12}")
    for task, by in table.items():
        for src, r in by.items():
            print(f"{task:<12}{src:<8}{r['cases']:>6}{r['happened']:>9}{r['false_done']:>11.3f}{r['missed_done']:>12.3f}"
                  f"{r['cannot_tell']:>12.3f}")
    # only what was measured (an empty list has no percentile; NaN is not JSON)
    summary = {k: {"p50": _pct(v, 50), "p90": _pct(v, 90), "n": len(v)} for k, v in costs.items() if v}
    if all(costs[k] for k in ("perceive", "tokens", "step_whole", "step_given")):
        print("costs (ms, p50 / p90): perceive {0[p50]:.1f} / {0[p90]:.1f} ({1[p50]:.0f} tokens); next step whole"
              " {2[p50]:.1f} / {2[p90]:.1f}; next step with the perception given {3[p50]:.1f} / {3[p90]:.1f}".format(
                  summary["perceive"], summary["tokens"], summary["step_whole"], summary["step_given"]))
    if costs["check"]:
        print("step verifier (ms, p50 / p90): {0[p50]:.1f} / {0[p90]:.1f}".format(summary["check"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", "bench/verify_frames.py", *(argv or sys.argv[1:])]),
                               "args": vars(args), "wall_s": wall, "load_average": load, "table": table, "costs_ms": summary,
                               "cases": cases_out}, indent=1))
    print(f"JSON: {out}")
    if plot_step_checks(cases_out, out.with_suffix(".png")):
        print(f"picture: {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
