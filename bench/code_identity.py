"""Code identity: how much does one FSQ code say about the object centred in its token?

    python bench/code_identity.py --tokenizer DIR [DIR ...] [--train-scenes 800] [--heldout-scenes 300]

No training, no head: a lookup table. TableClear and SortBlocks reset frames (96 px) of TRAIN seeds
give, for every code seen on a token with an object centred in it (the recording's targets,
``finetune_embodied.sequences.frame_cell_targets``), the object name it was seen with most often;
on frames of held-out seeds each object token is then named by its code alone. A code unseen on the
train frames counts as wrong. The same numbers for every tokenizer, so it compares a tokenizer
trained with ``semantic_aux`` with one trained without (docs/tokenizers.md, "Semantic auxiliary
loss"). Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

TASKS = ("table_clear", "sort_blocks")


def render(n: int, first_seed: int) -> tuple[np.ndarray, list[str], list[list]]:
    """n reset frames per task: (N, 96, 96, 3) uint8, perception texts, object pixels."""
    import gymnasium as gym

    from finetune_embodied.record import frame_perception, task_env_ids

    ids = task_env_ids()
    images, texts, pixels = [], [], []
    for task in TASKS:
        env = gym.make(ids[task], resolution=96)
        for seed in range(first_seed, first_seed + n):
            obs, _ = env.reset(seed=seed)
            text, pix = frame_perception(env.unwrapped, 96, 96)
            images.append(obs["image"])
            texts.append(text)
            pixels.append(pix)
        env.close()
    return np.stack(images), texts, pixels


def object_tokens(tokenizer, images: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, classes) of the tokens with an object centred in them."""
    codes = np.concatenate([tokenizer.encode(images[i : i + 64]) for i in range(0, len(images), 64)])
    flat = codes.reshape(len(images), -1)
    hit = cells > 0
    return flat[hit], cells[hit]


def score(tokenizer, train: tuple, heldout: tuple, classes: list[str]) -> dict:
    fit_codes, fit_cls = object_tokens(tokenizer, *train)
    codes, cls = object_tokens(tokenizer, *heldout)
    seen: dict[int, Counter] = defaultdict(Counter)
    for c, k in zip(fit_codes.tolist(), fit_cls.tolist()):
        seen[c][k] += 1
    table = {c: cnt.most_common(1)[0][0] for c, cnt in seen.items()}
    pred = np.array([table.get(c, 0) for c in codes.tolist()])
    name = lambda k: classes[k - 1].split() if k > 0 else ["", ""]  # noqa: E731  "red cup" -> colour, kind
    colour = np.mean([name(p)[0] == name(t)[0] for p, t in zip(pred, cls)])
    kind = np.mean([name(p)[1] == name(t)[1] for p, t in zip(pred, cls)])
    return {
        "both": float(np.mean(pred == cls)), "colour": float(colour), "kind": float(kind),
        "unseen_codes": float(np.mean(pred == 0)), "object_tokens": int(len(cls)),
        "codes_on_objects": len(table),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/code_identity.py", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", nargs="+", required=True, help="FSQ tokenizer directories")
    p.add_argument("--train-scenes", type=int, default=800, help="per task, TRAIN seeds")
    p.add_argument("--heldout-scenes", type=int, default=300, help="per task, held-out seeds")
    p.add_argument("--out", default="runs/bench/code_identity.json")
    args = p.parse_args(argv)

    import torch

    from finetune_embodied.sequences import frame_cell_targets, perception_object_classes
    from model_runtime.tokenizers import load_vision_tokenizer
    from sim_envs.seeds import HELDOUT_SEEDS, TRAIN_SEEDS

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sets = [render(args.train_scenes, int(TRAIN_SEEDS[0])), render(args.heldout_scenes, int(HELDOUT_SEEDS[0]))]
    classes = perception_object_classes(sorted({t for _, texts, _ in sets for t in texts}))
    train, heldout = [
        (images, np.stack([frame_cell_targets(t, px, classes, (12, 12), (96, 96)) for t, px in zip(texts, pixels)]))
        for images, texts, pixels in sets
    ]
    rows = []
    for d in args.tokenizer:
        r = {"tokenizer": d, **score(load_vision_tokenizer(d), train, heldout, classes)}
        rows.append(r)
    print(f"\nCode identity: object named by its token's code alone (lookup from {args.train_scenes} train "
          f"scenes per task, scored on {args.heldout_scenes} held-out per task; {len(classes)} object names)")
    print("| tokenizer | held-out both | colour | kind | unseen codes | codes on objects |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokenizer']} | {r['both']:.3f} | {r['colour']:.3f} | {r['kind']:.3f} | "
              f"{r['unseen_codes']:.3f} | {r['codes_on_objects']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "classes": classes, "rows": rows,
                               "seconds": time.perf_counter() - t0}, indent=1))
    print(f"JSON: {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
