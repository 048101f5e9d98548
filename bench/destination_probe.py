"""Destination probe: does the LM read which bin the instruction gives a SortBlocks colour?

    python bench/destination_probe.py [--model-path model_runtime/default_model] [--scenes 20]
                                      [--seed-offset 0] [--out runs/bench/destination_probe.json]

SortBlocks' sort instructions map colours to bins ("put the red blocks in the left bin and the
blue blocks in the right bin"); the mapping is drawn per scene, so neither the frame nor the
block tells it: only the instruction does. For each place step of the ground-truth plan of
held-out sort scenes (the plan executed by the sim's skills up to it, the done steps in the
prompt as the loop keeps them), the LM reads the real prompt and the step's own words up to
"... block in the", and the probe compares its likeliest bin word (left / middle / right) with
the plan's. Teacher-forced, one forward per step: it measures the model, not the decoding (no
grounding, no sampling). Chance is 1/2 in two-bin scenes and 1/3 in three-bin ones.

Prints a table (accuracy by number of bins, confusion of true against said bin) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BINS = ("left", "middle", "right")


def probe(model_path: str | None, scenes: int, seed_offset: int) -> dict:
    import torch

    from emu_guide.types import Frame
    from model_runtime.prompt import build_prompt
    from planner.envs import make_backend, make_env
    from sim_envs.seeds import HELDOUT_SEEDS

    env = make_env("sort_blocks")
    backend = make_backend("torch", env, model_path=model_path)
    words = {w: backend.text.encode(w) for w in BINS}
    if any(len(ids) != 1 for ids in words.values()):
        raise SystemExit(f"error: the model's text tokenizer does not give one token per bin word: {words}")
    ids = {w: ids[0] for w, ids in words.items()}
    cases, seen = [], 0
    for seed in HELDOUT_SEEDS[seed_offset:]:
        if seen == scenes:
            break
        env.reset(seed=seed)
        sim = env.unwrapped
        if sim.mode != "sort":
            continue
        seen += 1
        done = []
        for step in sim.ground_truth_plan():
            if step.goal.verb == "place":
                codes = backend.vision.encode_one(backend.prepare_frame(Frame(sim.render())))
                history = backend.history_texts(done)
                prompt = build_prompt(backend.layout, backend.text, sim.instruction, history, codes, task=backend.task)
                opening = step.text.split(" in the ")[0] + " in the"
                with torch.inference_mode():
                    logits = backend.lm(torch.tensor([prompt + list(backend.text.encode(opening))])).logits[0, -1]
                probs = torch.softmax(logits[[ids[w] for w in BINS]].float(), dim=-1).tolist()
                cases.append({"seed": seed, "bins": len(sim.receptacles), "step": step.text,
                              "true": step.goal.target.split()[0], "said": BINS[probs.index(max(probs))],
                              "p": dict(zip(BINS, (round(p, 4) for p in probs)))})
            sim.execute_skill(step.goal)
            done.append(step)
    env.close()
    return {"cases": cases, "model_id": backend.model_id}


def summarise(cases: list[dict]) -> dict:
    out = {}
    for n in (2, 3, None):
        sel = [c for c in cases if n is None or c["bins"] == n]
        key = "all" if n is None else f"{n} bins"
        out[key] = {"steps": len(sel), "accuracy": round(sum(c["said"] == c["true"] for c in sel) / max(len(sel), 1), 3),
                    "chance": {2: 0.5, 3: round(1 / 3, 3)}.get(n)}
    out["confusion"] = {f"{t} -> {s}": k for (t, s), k in sorted(Counter((c["true"], c["said"]) for c in cases).items())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default=None, help="a model directory (default: the shipped one)")
    ap.add_argument("--scenes", type=int, default=20, help="held-out sort scenes")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed = HELDOUT_SEEDS[offset]")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "destination_probe.json"))
    args = ap.parse_args(argv)
    if args.scenes < 1:
        ap.error(f"--scenes must be >= 1, got {args.scenes}")
    t0 = time.perf_counter()
    result = probe(args.model_path, args.scenes, args.seed_offset)
    summary = summarise(result["cases"])
    print(f"destination probe: {args.scenes} held-out sort scenes from offset {args.seed_offset}, "
          f"model {result['model_id']}, {time.perf_counter() - t0:.0f} s")
    print(f"{'scenes':<8} {'steps':>5} {'accuracy':>8} {'chance':>6}")
    for key in ("2 bins", "3 bins", "all"):
        row = summary[key]
        chance = "" if row["chance"] is None else f"{row['chance']:.2f}"
        print(f"{key:<8} {row['steps']:>5} {row['accuracy']:>8.3f} {chance:>6}")
    print("true -> said: " + ", ".join(f"{k} {v}" for k, v in summary["confusion"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"command": " ".join(["python", "bench/destination_probe.py", *(argv or sys.argv[1:])]),
                               "summary": summary, **result}, indent=1))
    tmp.replace(out)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
