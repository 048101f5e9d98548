"""Reading probe: can a small transformer name the first TableClear item from a frame's visual tokens?

    python bench/reading_probe.py [--tokenizer model_runtime/default_model/vision_tokenizer] [--train-scenes 4000]
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
  prompt (``model_runtime.prompt.build_prompt``: instruction + frame), trained with the LM loss on the
  answer "pick up the <colour> <kind>" and scored on the words it predicts there (needs
  ``--model-dir`` for the word vocabulary). Options move it towards the pipeline's training one
  setting at a time: ``--lm-untied`` (its own output head), ``--lm-init hf|embed|torch`` (the
  initialisation; ``embed``, a unit-normal input embedding, is what makes it read),
  ``--lm-target first|any``, ``--lm-answer item|plan`` (the whole rest-of-plan answer, loss on every
  token), ``--lm-frames first|mixed`` (frames after 0-5 done pick-and-place pairs, done steps in
  the prompt), ``--lm-optim probe|train`` (the training loop's schedule and clipping), ``--lm-lr``.
  Session-4 results: docs/training.md ("What makes the probe read").

``--eval-model DIR`` instead reads a trained model directory: its colour distribution after "pick
up the" on held-out first frames (``--plan-prompt``: after the rest-of-plan request).

Trained on TRAIN-seed scenes, scored on held-out seeds; a gap between train and held-out
accuracy is memorisation. Prints a table and writes JSON (``--out``). One thread per mode; 1000
steps take about 3.5 min on one core for the encoder modes, about 13 min for ``lm`` (about 30 with
``--lm-answer plan``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("codes", "digits", "recon", "pixels", "lm")


def scenes(n: int, first_seed: int, mixed: bool = False) -> tuple:
    """(n, 96, 96, 3) first frames, (n, 2) [colour, kind] labels of the first pick, instructions,
    every item on the table as (colour, kind) (TableClear takes the items in any order), the
    plan's step sentences from there on, and the done steps (the last four, as the prompt keeps).

    ``mixed``: instead of first frames, each scene first runs 0-5 pick-and-place pairs of its plan
    (the sim's skills; how many is drawn from the seed), as the pipeline's sequences sample frames
    all through an episode with the done steps in the prompt.
    """
    import gymnasium as gym

    import sim_envs  # noqa: F401  (registers the envs)
    from sim_envs.rigid import PALETTE
    from sim_envs.table_clear import KINDS

    colours, kinds = list(PALETTE), list(KINDS)
    env = gym.make("sim_envs/TableClear-v0", resolution=96)
    images, labels, instructions, present, plans, histories = [], [], [], [], [], []
    for seed in range(first_seed, first_seed + n):
        obs, _ = env.reset(seed=seed)
        sim = env.unwrapped
        plan = sim._plan
        done = 2 * int(np.random.default_rng(seed).integers(0, 6)) if mixed else 0
        for step in plan[:done]:
            result = sim.execute_skill(step.goal)
            if not result.success:
                raise RuntimeError(f"seed {seed}: the expert's step {step.text!r} failed: {result.reason}")
        image = sim.render() if done else obs["image"]
        goal = plan[done].goal  # ActionGoal("pick", "<colour> <kind>")
        colour, kind = goal.object.split()
        images.append(image)
        labels.append((colours.index(colour), kinds.index(kind)))
        instructions.append(sim.instruction)
        present.append([(colours.index(it.colour_name), kinds.index(it.kind)) for it in sim.items
                        if it.location == "table"])
        plans.append([step.text for step in plan[done:]])
        histories.append([step.text for step in plan[:done]][-4:])
    env.close()
    return np.stack(images), np.asarray(labels), instructions, present, plans, histories


def run_lm(
    tokenizer,
    model_dir: str,
    train: tuple,
    heldout: tuple,
    steps: int,
    seed: int,
    untied: bool = False,
    target: str = "first",
    lr: float = 1e-3,
    init: str = "hf",
    answer: str = "item",
    optim: str = "probe",
) -> dict:
    """The ``lm`` mode: the guidance LM learns "prompt -> pick up the <colour> <kind>" and nothing else.

    ``target``: "first" answers the plan's first item (the one nearest the camera); "any" answers
    an item drawn at random from the table at every step, so the LM learns which items are there
    (TableClear accepts them in any order). Both are scored on the first item and on presence:
    is the greedy colour on the table, is the greedy item (colour, then kind given it)?
    ``init``: "hf" keeps the transformers initialisation (normal, std 0.02, everywhere); "embed"
    starts only the input embedding unit-normal (nn.Embedding's default); "torch" also re-initialises
    every Linear with PyTorch's default, as the encoder modes have it.
    ``answer``: "item" trains "prompt -> pick up the <colour> <kind>" with the loss on those two
    words; "plan" trains what the pipeline's rest-of-plan sequences hold at a first frame ("list the
    remaining steps: <instruction>" + frame -> all twelve steps), with the loss on every answer token.
    ``optim``: "probe" is constant-lr AdamW; "train" is the training loop's (betas 0.9/0.95, 50
    warm-up steps, cosine to 0.1 x lr, gradient clipping at 1.0).
    """
    import torch
    import torch.nn.functional as F

    from finetune_embodied.train.factorized_codes import apply_factorized_codes
    from model_runtime.backends.torch_backend import load_model_dir
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.prompt import PLAN_REQUEST, PLAN_SEPARATOR, build_prompt
    from sim_envs.rigid import PALETTE
    from sim_envs.table_clear import KINDS

    if target not in ("first", "any"):
        raise ValueError(f"target must be 'first' or 'any', got {target!r}")
    if answer not in ("item", "plan") or (answer == "plan" and target != "first"):
        raise ValueError(f"answer must be 'item' or 'plan' (plan only with target 'first'), got {answer!r}")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    parts = load_model_dir(model_dir)
    layout, words = parts["layout"], parts["text"]
    colour_ids = torch.tensor([words.encode(c)[0] for c in PALETTE])
    kind_ids = torch.tensor([words.encode(k)[0] for k in KINDS])
    opening = words.encode("pick up the")

    def prompts(images, instructions, histories) -> list[list[int]]:
        codes = np.asarray(tokenizer.encode(images))
        if answer == "plan":
            instructions = [f"{PLAN_REQUEST} {ins}" for ins in instructions]
        return [build_prompt(layout, words, ins, h, c) + opening for c, ins, h in zip(codes, instructions, histories)]

    def rests(plans) -> list[list[int]]:
        """answer "plan": the answer tokens after "pick up the <colour> <kind>"."""
        if answer == "item":
            return [[] for _ in plans]
        out = []
        for steps in plans:
            ids = words.encode(f" {PLAN_SEPARATOR} ".join(steps))
            assert ids[: len(opening)] == opening, steps[0]
            out.append(ids[len(opening) + 2 :])
        return out

    def batch(heads: list[list[int]], labels, tails: list[list[int]] | None = None) -> tuple:
        """Prompt + "<colour> <kind> [rest of the plan] <eos>", right-padded; the position that
        predicts the colour."""
        tails = tails or [[] for _ in heads]
        seqs = [q + [int(colour_ids[y[0]]), int(kind_ids[y[1]])] + t + [layout.eos] for q, y, t in zip(heads, labels, tails)]
        width = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), width), layout.pad)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, : len(q)], mask[i, : len(q)] = torch.tensor(q), 1
        return ids, mask, torch.tensor([len(q) - 1 for q in heads])

    ptr, pte = prompts(train[0], train[2], train[5]), prompts(heldout[0], heldout[2], heldout[5])
    rtr = rests(train[4])
    lm_cfg = LMConfig(vocab_size=layout.vocab_size, tie_word_embeddings=not untied)
    model = apply_factorized_codes(
        build_lm(lm_cfg), layout.visual_offset, tuple(tokenizer.config.levels), residual=False
    ).train()
    if init == "torch":  # every Linear with PyTorch's default (Kaiming-uniform)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    if init in ("torch", "embed"):  # unit-normal input rows (nn.Embedding's default), digit sums too
        embed = model.get_input_embeddings()  # the factorised table: text rows and digit tables
        with torch.no_grad():
            embed.weight.normal_(0.0, 1.0)
            for table in embed.digit_tables:
                table.normal_(0.0, len(embed.digit_tables) ** -0.5)
    if optim == "train":
        from finetune_embodied.train.config import load_config
        from finetune_embodied.train.loop import lr_lambda_factory

        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
        schedule = load_config(None, ["data.source=synthetic", f"optim.lr={lr}", "optim.warmup_steps=50",
                                      f"optim.max_steps={steps}"])  # the loop's cosine to 0.1 x lr  # fmt: skip
        factor = lr_lambda_factory(schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    else:
        opt, sched = torch.optim.AdamW(model.parameters(), lr=lr), None
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    @torch.no_grad()
    def accuracy(heads, first, present) -> dict:
        model.eval()
        ids, mask, cpos = batch(heads, first)
        rows = torch.arange(len(ids))
        logits = model(input_ids=ids, attention_mask=mask).logits
        c = logits[rows, cpos][:, colour_ids].argmax(1)
        k_first = logits[rows, cpos + 1][:, kind_ids].argmax(1)
        ids[rows, cpos + 1] = colour_ids[c]  # the kind the LM names after its own colour
        k_own = model(input_ids=ids, attention_mask=mask).logits[rows, cpos + 1][:, kind_ids].argmax(1)
        model.train()
        y = torch.as_tensor(np.asarray(first))
        ok_c, ok_k = c == y[:, 0], k_first == y[:, 1]
        colour_there = [int(ci) in {a for a, _ in items} for ci, items in zip(c, present)]
        item_there = [(int(ci), int(ki)) in items for ci, ki, items in zip(c, k_own, present)]
        return {
            "colour": float(ok_c.float().mean()),
            "kind": float(ok_k.float().mean()),
            "both": float((ok_c & ok_k).float().mean()),
            "colour_present": float(np.mean(colour_there)),
            "item_present": float(np.mean(item_there)),
        }

    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(ptr), (32,), generator=g).tolist()
        if target == "first":
            labels = [train[1][i] for i in idx]
        else:
            labels = [train[3][i][rng.integers(len(train[3][i]))] for i in idx]
        ids, mask, cpos = batch([ptr[i] for i in idx], labels, [rtr[i] for i in idx])
        logits = model(input_ids=ids, attention_mask=mask).logits
        rows = torch.arange(len(idx))
        if answer == "item":
            # The LM loss on the two answer words that need the image (the opening is trivial).
            loss = F.cross_entropy(logits[rows, cpos], ids[rows, cpos + 1]) + F.cross_entropy(
                logits[rows, cpos + 1], ids[rows, cpos + 2]
            )
        else:  # every answer token, from "pick" to EOS, as the pipeline's sequences weigh them
            pos = torch.arange(ids.shape[1] - 1)[None, :]
            start = (cpos - len(opening))[:, None]
            target = ids[:, 1:].clone()
            target[(pos < start) | (mask[:, 1:] == 0)] = -100
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        if sched is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        if (step + 1) % 250 == 0:
            print(f"  lm: step {step + 1}/{steps} loss {loss.item():.3f}", file=sys.stderr, flush=True)
    n = len(pte)
    name = (
        "lm"
        + ("-untied" if untied else "")
        + ("-any" if target == "any" else "")
        + (f"-lr{lr:g}" if lr != 1e-3 else "")
        + (f"-init-{init}" if init != "hf" else "")
        + (f"-answer-{answer}" if answer != "item" else "")
        + (f"-optim-{optim}" if optim != "probe" else "")
    )
    return {
        "mode": name,
        "steps": steps,
        "train": accuracy(ptr[:n], train[1][:n], train[3][:n]),
        "heldout": accuracy(pte, heldout[1], heldout[3]),
        "seconds": time.perf_counter() - t0,
    }


def eval_model(model_dir: str, heldout: tuple, plan_prompt: bool = False) -> dict:
    """A trained guidance model (``--eval-model``): does its first step read the frame?

    For each held-out TableClear first frame, the LM's distribution over colour words right after
    "pick up the" (the real prompt, frame at the backend's resolution). Reported: greedy colour =
    the first item's; greedy colour on the table; probability mass on the table's colours (a
    frame-blind LM gets about the share of the palette present); mean pairwise total-variation
    distance between scenes' colour distributions (near 0: the same answer whatever the frame).
    ``plan_prompt``: ask the rest-of-plan question instead ("list the remaining steps: ..."; what
    the reading warm-up stage trains) and read the colour of the first step it lists.
    """
    import torch

    from model_runtime.backends.torch_backend import load_model_dir
    from model_runtime.prompt import PLAN_REQUEST, build_prompt
    from sim_envs.rigid import PALETTE

    torch.set_num_threads(1)
    parts = load_model_dir(model_dir)
    lm, layout, words, vision = parts["lm"].eval(), parts["layout"], parts["text"], parts["vision"]
    colour_ids = torch.tensor([words.encode(c)[0] for c in PALETTE])
    opening = words.encode("pick up the")
    images, labels, instructions, present = heldout[:4]
    codes = np.asarray(vision.encode(images))
    probs = []
    with torch.no_grad():
        for c, ins in zip(codes, instructions):
            request = f"{PLAN_REQUEST} {ins}" if plan_prompt else ins
            ids = torch.tensor([build_prompt(layout, words, request, [], c) + opening])
            logits = lm(input_ids=ids).logits[0, -1, colour_ids]
            probs.append(torch.softmax(logits, 0).numpy())
    p = np.stack(probs)  # (n, 10)
    on_table = [sorted({a for a, _ in items}) for items in present]
    greedy = p.argmax(1)
    tv = 0.5 * np.abs(p[:, None, :] - p[None, :, :]).sum(-1)
    n = len(p)
    return {
        "mode": f"model {model_dir}" + (" (rest-of-plan prompt)" if plan_prompt else ""),
        "scenes": n,
        "colour": float(np.mean(greedy == labels[:, 0])),
        "colour_present": float(np.mean([g in t for g, t in zip(greedy, on_table)])),
        "mass_on_table": float(np.mean([p[i, t].sum() for i, t in enumerate(on_table)])),
        "blind_mass_on_table": float(np.mean([len(t) / len(PALETTE) for t in on_table])),
        "pairwise_tv": float(tv.sum() / (n * (n - 1))),
    }


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
        return {
            "colour": float(ok_c.float().mean()),
            "kind": float(ok_k.float().mean()),
            "both": float((ok_c & ok_k).float().mean()),
        }

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
    return {
        "mode": mode,
        "steps": steps,
        "train": accuracy(xtr[: len(xte)], ytr[: len(xte)]),
        "heldout": accuracy(xte, yte),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    from sim_envs.seeds import HELDOUT_SEEDS

    p = argparse.ArgumentParser(prog="bench/reading_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default="model_runtime/default_model/vision_tokenizer", help="an FSQ tokenizer directory")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--heldout-scenes", type=int, default=500)
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per mode (batch 32)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default="model_runtime/default_model", help="lm mode: the word vocabulary and layout")
    p.add_argument(
        "--lm-untied", action="store_true", help="lm mode: an output head of its own (not the input embedding)"
    )
    p.add_argument(
        "--lm-target",
        choices=("first", "any"),
        default="first",
        help="lm mode: answer the nearest item (the plan's first) or a random item on the table",
    )
    p.add_argument("--lm-lr", type=float, default=1e-3, help="lm mode: AdamW learning rate")
    p.add_argument(
        "--lm-init",
        choices=("hf", "embed", "torch"),
        default="hf",
        help="lm mode: transformers' init (std 0.02); unit-normal input embedding; or PyTorch defaults too",
    )
    p.add_argument("--lm-answer", choices=("item", "plan"), default="item",
                   help="lm mode: the first item (loss on its two words) or the whole plan (loss on every token)")
    p.add_argument("--lm-optim", choices=("probe", "train"), default="probe",
                   help="lm mode: constant-lr AdamW, or the training loop's schedule, betas and clipping")
    p.add_argument("--lm-frames", choices=("first", "mixed"), default="first",
                   help="first frames, or frames after 0-5 done pick-and-place pairs with those steps in the prompt")
    p.add_argument("--eval-model", default="", help="instead: how a trained model directory's first step reads")
    p.add_argument("--plan-prompt", action="store_true", help="--eval-model: ask for the rest of the plan instead")
    p.add_argument("--out", default="runs/bench/reading_probe.json")
    args = p.parse_args(argv)

    if args.eval_model:
        r = eval_model(args.eval_model, scenes(args.heldout_scenes, int(HELDOUT_SEEDS[0])), args.plan_prompt)
        print(f"\nFirst-step reading of {r['mode']} on {r['scenes']} held-out TableClear frames")
        print("| greedy colour = first item | greedy colour on table | mass on table's colours (frame-blind) "
              "| pairwise TV |")
        print("|---|---|---|---|")
        print(f"| {r['colour']:.3f} | {r['colour_present']:.3f} | {r['mass_on_table']:.3f} "
              f"({r['blind_mass_on_table']:.3f}) | {r['pairwise_tv']:.3f} |")
        rows = [r]
    else:
        rows = run_probes(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"JSON: {out}")
    return 0


def run_probes(args) -> list[dict]:
    from model_runtime.tokenizers.fsq import FSQTokenizer
    from sim_envs.seeds import HELDOUT_SEEDS, TRAIN_SEEDS

    tokenizer = FSQTokenizer.load(args.tokenizer)
    if tokenizer.config.image_size != 96 or tokenizer.config.downsample != 8:
        raise SystemExit(
            f"the probe expects a 96 px, 12x12 tokenizer; {args.tokenizer} is "
            f"{tokenizer.config.image_size} px / {tokenizer.config.downsample}"
        )
    mixed = args.lm_frames == "mixed"
    train = scenes(args.train_scenes, int(TRAIN_SEEDS[0]), mixed)
    heldout = scenes(args.heldout_scenes, int(HELDOUT_SEEDS[0]), mixed)
    rows = [
        run_lm(
            tokenizer,
            args.model_dir,
            train,
            heldout,
            args.steps,
            args.seed,
            args.lm_untied,
            args.lm_target,
            args.lm_lr,
            args.lm_init,
            args.lm_answer,
            args.lm_optim,
        )
        if m == "lm"
        else run_mode(m, tokenizer, train, heldout, args.steps, args.seed)
        for m in args.modes
    ]
    for r in rows:
        r["frames"] = args.lm_frames

    print(
        f"\nReading probe: next TableClear pick from one 96 px frame ({args.lm_frames} frames); {args.train_scenes} train / "
        f"{args.heldout_scenes} held-out scenes, {args.steps} steps; tokenizer {args.tokenizer}"
    )
    print(
        "| input | held-out colour | held-out kind | held-out both | train both | held-out colour on table | "
        "held-out item on table | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        h, t = r["heldout"], r["train"]
        there = f"{h['colour_present']:.3f} | {h['item_present']:.3f}" if "colour_present" in h else "- | -"
        print(
            f"| {r['mode']} | {h['colour']:.3f} | {h['kind']:.3f} | {h['both']:.3f} | {t['both']:.3f} | {there} | "
            f"{r['seconds']:.0f} |"
        )
    # what a reader that ignores the frame gets: a colour from the palette, an item from all 80
    chance_colour = float(np.mean([len({c for c, _ in items}) / 10 for items in heldout[3]]))
    chance_item = float(np.mean([len(items) / 80 for items in heldout[3]]))
    print(
        f"chance: colour 0.100, kind 0.125, both 0.0125; colour on table {chance_colour:.3f}, item on table "
        f"{chance_item:.3f}"
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
