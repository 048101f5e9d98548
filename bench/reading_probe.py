"""Reading probe: can a small transformer name the first TableClear item from a frame's visual tokens?

    python bench/reading_probe.py [--tokenizer emu_ros/default_model/vision_tokenizer] [--train-scenes 4000]
                                  [--modes codes digits recon pixels] [--steps 1000]

The first pick of a TableClear plan names the item nearest the camera ("pick up the red cup"):
colour (10) x kind (8). Each mode feeds the same 4-layer, 128-wide transformer encoder (the
default LM's size) with one 12x12 frame:

- ``codes``: FSQ code ids through a free embedding table (what a plain LM sees);
- ``digits``: the same codes as sums of per-FSQ-channel digit embeddings
  (``finetune_embodied.train.factorized_codes``);
- ``recon``: the tokenizer's reconstruction, 8x8 pixel patches through a linear layer
  (the information the codes keep, in pixel form);
- ``pixels``: the raw frame's 8x8 patches (the upper bound at this resolution);
- ``lm``: the default guidance LM itself (``LMConfig()``, Qwen3, digit code rows) on the real
  prompt (``emu_ros.prompt.build_prompt``: instruction + frame), trained with the LM loss on the
  answer "pick up the <colour> <kind>" and scored on the words it predicts there (needs
  ``--model-dir`` for the word vocabulary). Session 3 measured chance here with the tied head; an
  untied head (``--lm-untied`` here; measured on an ad-hoc variant with free code rows and one
  fixed instruction) read 0.256 held-out colour after 500 steps (docs/training.md).

Trained on TRAIN-seed scenes (first frames), scored on held-out seeds; a gap between train and
held-out accuracy is memorisation. Prints a table and writes JSON (``--out``). One thread per
mode; each 1000 steps take about 3.5 min on one core of this CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("codes", "digits", "recon", "pixels", "lm")


def scenes(n: int, first_seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n, 96, 96, 3) first frames, (n, 2) [colour, kind] labels of the first pick, instructions."""
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the envs)
    from sim_envs.rigid import PALETTE
    from sim_envs.table_clear import KINDS

    colours, kinds = list(PALETTE), list(KINDS)
    env = gym.make("sim_envs/TableClear-v0", resolution=96)
    images, labels, instructions = [], [], []
    for seed in range(first_seed, first_seed + n):
        obs, _ = env.reset(seed=seed)
        goal = env.unwrapped._plan[0].goal  # ActionGoal("pick", "<colour> <kind>")
        colour, kind = goal.object.split()
        images.append(obs["image"])
        labels.append((colours.index(colour), kinds.index(kind)))
        instructions.append(env.unwrapped.instruction)
    env.close()
    return np.stack(images), np.asarray(labels), instructions


def run_lm(tokenizer, model_dir: str, train: tuple, heldout: tuple, steps: int, seed: int, untied: bool = False) -> dict:
    """The ``lm`` mode: the guidance LM learns "prompt -> pick up the <colour> <kind>" and nothing else."""
    import torch
    import torch.nn.functional as F

    from emu_ros.backends.torch_backend import load_model_dir
    from emu_ros.lm import LMConfig, build_lm
    from emu_ros.prompt import build_prompt
    from finetune_embodied.train.factorized_codes import apply_factorized_codes
    from sim_envs.rigid import PALETTE
    from sim_envs.table_clear import KINDS

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    parts = load_model_dir(model_dir)
    layout, words = parts["layout"], parts["text"]
    colour_ids = torch.tensor([words.encode(c)[0] for c in PALETTE])
    kind_ids = torch.tensor([words.encode(k)[0] for k in KINDS])
    opening = words.encode("pick up the")

    def batch(images, labels, instructions):
        codes = np.asarray(tokenizer.encode(images))
        seqs = [build_prompt(layout, words, ins, [], c) + opening + [int(colour_ids[y[0]]), int(kind_ids[y[1]]), layout.eos]
                for c, y, ins in zip(codes, labels, instructions)]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), layout.pad)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, : len(q)], mask[i, : len(q)] = torch.tensor(q), 1
        colour_pos = torch.tensor([len(q) - 4 for q in seqs])  # this position predicts the colour word
        return ids, mask, colour_pos

    xtr, xte = batch(*train), batch(*heldout)
    ytr, yte = torch.as_tensor(train[1]), torch.as_tensor(heldout[1])
    lm_cfg = LMConfig(vocab_size=layout.vocab_size, tie_word_embeddings=not untied)
    model = apply_factorized_codes(build_lm(lm_cfg), layout.visual_offset, tuple(tokenizer.config.levels),
                                   residual=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def accuracy(x, y) -> dict:
        model.eval()
        ids, mask, cpos = x
        logits = model(input_ids=ids, attention_mask=mask).logits
        rows = torch.arange(len(ids))
        c = logits[rows, cpos][:, colour_ids].argmax(1)
        k = logits[rows, cpos + 1][:, kind_ids].argmax(1)
        model.train()
        ok_c, ok_k = c == y[:, 0], k == y[:, 1]
        return {"colour": float(ok_c.float().mean()), "kind": float(ok_k.float().mean()),
                "both": float((ok_c & ok_k).float().mean())}

    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(ytr), (32,), generator=g)
        ids, mask, cpos = (t[idx] for t in xtr)
        logits = model(input_ids=ids, attention_mask=mask).logits
        rows = torch.arange(len(idx))
        # The LM loss on the two answer words that need the image (the opening is trivial).
        loss = F.cross_entropy(logits[rows, cpos], ids[rows, cpos + 1]) + F.cross_entropy(logits[rows, cpos + 1], ids[rows, cpos + 2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            print(f"  lm: step {step + 1}/{steps} loss {loss.item():.3f}", file=sys.stderr, flush=True)
    n = len(yte)
    return {"mode": "lm-untied" if untied else "lm", "steps": steps, "train": accuracy(tuple(t[:n] for t in xtr), ytr[:n]),
            "heldout": accuracy(xte, yte), "seconds": time.perf_counter() - t0}


def run_mode(mode: str, tokenizer, train: tuple, heldout: tuple, steps: int, seed: int) -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from finetune_embodied.train.factorized_codes import code_digits

    torch.manual_seed(seed)
    torch.set_num_threads(1)

    def inputs(images: np.ndarray) -> torch.Tensor:
        if mode in ("codes", "digits"):
            return torch.as_tensor(np.asarray(tokenizer.encode(images))).long().flatten(1)  # (N, 144)
        if mode == "recon":
            images = np.asarray(tokenizer.decode(np.asarray(tokenizer.encode(images))))
        x = torch.as_tensor(images).float().div(255)  # (N, 96, 96, 3) -> 8x8 patches (N, 144, 192)
        return x.reshape(len(x), 12, 8, 12, 8, 3).permute(0, 1, 3, 2, 4, 5).reshape(len(x), 144, 192)

    levels = tuple(tokenizer.config.levels)

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if mode == "codes":
                self.embed = nn.Embedding(tokenizer.num_codes, 128)
            elif mode == "digits":
                self.register_buffer("digits", code_digits(levels))
                self.tables = nn.ModuleList([nn.Embedding(v, 128) for v in levels])
            else:
                self.embed = nn.Linear(192, 128)
            self.pos = nn.Parameter(torch.randn(144, 128) * 0.02)
            self.cls = nn.Parameter(torch.zeros(1, 1, 128))
            layer = nn.TransformerEncoderLayer(128, 4, 384, 0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
            self.colour, self.kind = nn.Linear(128, 10), nn.Linear(128, 8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if mode == "digits":
                d = self.digits[x]  # (B, 144, channels)
                h = sum(t(d[..., i]) for i, t in enumerate(self.tables))
            else:
                h = self.embed(x)
            h = torch.cat([self.cls.expand(len(h), -1, -1), h + self.pos], 1)
            h = self.encoder(h)[:, 0]
            return self.colour(h), self.kind(h)

    xtr, ytr = inputs(train[0]), torch.as_tensor(train[1])
    xte, yte = inputs(heldout[0]), torch.as_tensor(heldout[1])
    model = Probe()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def accuracy(x, y) -> dict:
        model.eval()
        c, k = model(x)
        model.train()
        ok_c, ok_k = c.argmax(1) == y[:, 0], k.argmax(1) == y[:, 1]
        return {"colour": float(ok_c.float().mean()), "kind": float(ok_k.float().mean()),
                "both": float((ok_c & ok_k).float().mean())}

    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(xtr), (32,), generator=g)
        c, k = model(xtr[idx])
        loss = F.cross_entropy(c, ytr[idx, 0]) + F.cross_entropy(k, ytr[idx, 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 250 == 0:
            print(f"  {mode}: step {step + 1}/{steps} loss {loss.item():.3f}", file=sys.stderr, flush=True)
    return {"mode": mode, "steps": steps, "train": accuracy(xtr[: len(xte)], ytr[: len(xte)]),
            "heldout": accuracy(xte, yte), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    from emu_ros.tokenizers.fsq import FSQTokenizer
    from sim_envs.seeds import HELDOUT_SEEDS, TRAIN_SEEDS

    p = argparse.ArgumentParser(prog="bench/reading_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default="emu_ros/default_model/vision_tokenizer", help="an FSQ tokenizer directory")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--heldout-scenes", type=int, default=500)
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per mode (batch 32)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default="emu_ros/default_model", help="lm mode: the word vocabulary and layout")
    p.add_argument("--lm-untied", action="store_true", help="lm mode: an output head of its own (not the input embedding)")
    p.add_argument("--out", default="runs/bench/reading_probe.json")
    args = p.parse_args(argv)

    tokenizer = FSQTokenizer.load(args.tokenizer)
    if tokenizer.config.image_size != 96 or tokenizer.config.downsample != 8:
        raise SystemExit(f"the probe expects a 96 px, 12x12 tokenizer; {args.tokenizer} is "
                         f"{tokenizer.config.image_size} px / {tokenizer.config.downsample}")
    train = scenes(args.train_scenes, int(TRAIN_SEEDS[0]))
    heldout = scenes(args.heldout_scenes, int(HELDOUT_SEEDS[0]))
    rows = [run_lm(tokenizer, args.model_dir, train, heldout, args.steps, args.seed, args.lm_untied) if m == "lm"
            else run_mode(m, tokenizer, train, heldout, args.steps, args.seed) for m in args.modes]

    print(f"\nReading probe: first TableClear pick from one 96 px frame; {args.train_scenes} train / "
          f"{args.heldout_scenes} held-out scenes, {args.steps} steps; tokenizer {args.tokenizer}")
    print("| input | held-out colour | held-out kind | held-out both | train both | s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        h, t = r["heldout"], r["train"]
        print(f"| {r['mode']} | {h['colour']:.3f} | {h['kind']:.3f} | {h['both']:.3f} | {t['both']:.3f} | {r['seconds']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
