"""The one training loop. The stage (what model, what data, what loss) comes from the config.

Determinism and resume: nothing in a step depends on hidden state that a checkpoint does not
hold. The samples of step s are drawn from per-epoch permutations seeded by ``seed + epoch``
at the running sample count (saved); the noise of step s (DiDA corruption) comes from a generator
seeded by ``(seed, step, rank)``. Weights, AdamW moments and the LR scheduler are restored from
the checkpoint, so k steps + resume + (N - k) steps gives the same weights as N steps.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune_embodied.train import checkpoint as ckpt
from finetune_embodied.train import distributed as D
from finetune_embodied.train.config import TrainConfig
from finetune_embodied.train.metrics import MetricsLog, plot_curves


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None  # last checkpoint written
    steps: int  # optimizer steps done in total (including before a resume)
    wall_s: float  # this invocation's training wall time
    samples_per_s: float  # training throughput of this invocation (all processes together)
    final_eval: dict[str, float] = field(default_factory=dict)
    model: torch.nn.Module | None = None  # the trained model (unwrapped from DDP/FSDP), for callers and tests


class EpochSampler:
    """Sample index for a running position: epoch e is a permutation seeded by seed + e."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise ValueError("the training set is empty: nothing to train on")
        self.n = n
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch cached
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + count)]


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The per-step random stream (noise, masking): a function of (seed, step, rank) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)


def lr_lambda_factory(cfg: TrainConfig):
    o = cfg.optim

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        span = max(1, o.max_steps - o.warmup_steps)
        t = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and other 1-D parameters."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2))


def autocast_context(cfg: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA ("auto" or "bf16"); fp32 (no autocast) on CPU."""
    if cfg.precision == "bf16" and device.type != "cuda":
        raise RuntimeError("precision 'bf16' needs a CUDA GPU; on CPU use 'auto' or 'fp32'")
    if device.type == "cuda" and cfg.precision in ("auto", "bf16"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train(cfg: TrainConfig, stop_after_step: int | None = None, progress: bool = True) -> TrainResult:
    """Run (or resume) one training stage as configured; returns where the results are.

    ``stop_after_step`` ends this invocation after that step's checkpoint, as a kill right after
    saving would (used to test resuming).
    """
    from finetune_embodied.train.stages import make_stage

    info = D.setup(cfg.device, cfg.distributed)
    run_dir = cfg.run_dir
    ckpt_root = run_dir / "checkpoints"
    try:
        return _train(cfg, info, run_dir, ckpt_root, make_stage(cfg, info), stop_after_step, progress)
    finally:
        D.cleanup(info)


def _train(cfg, info, run_dir: Path, ckpt_root: Path, stage, stop_after_step, progress) -> TrainResult:
    from tqdm.auto import tqdm

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        report = getattr(stage, "data_report", "")
        if report:  # skipped bad episodes are reported, never dropped silently
            (run_dir / "data_report.txt").write_text(report + "\n")
            print(f"data: {report}")

    # ---- model, resume or initialise --------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = stage.build_model()
    resume_path = ckpt.resolve_resume(ckpt_root, cfg.checkpoint.resume)
    stale = ckpt.list_checkpoints(ckpt_root) if cfg.checkpoint.resume == "never" else []
    if stale:  # starting over: old checkpoints would otherwise be picked up by a later auto-resume
        D.barrier(info)
        if info.is_main:
            print(f"checkpoint.resume=never: removing {len(stale)} old checkpoint(s) in {ckpt_root}")
            for p in stale:
                shutil.rmtree(p, ignore_errors=True)
        D.barrier(info)
    state: dict[str, Any] | None = None
    if resume_path is not None:
        loaded = ckpt.load_checkpoint(resume_path)
        if loaded["config"].get("stage") != cfg.stage:
            raise ckpt.CheckpointError(
                f"checkpoint {str(resume_path)!r} is from stage {loaded['config'].get('stage')!r}, not {cfg.stage!r}"
            )
        model = stage.prepare_model(model)  # LoRA wrapping first: the checkpoint holds wrapped names
        _load_state(model, loaded["weights"], resume_path, trainable_only=stage.trainable_checkpoint)
        state = loaded["trainer_state"]
    else:
        if cfg.init_from:
            stage.load_init(model, cfg.init_from)
        model = stage.prepare_model(model)
    if info.strategy != "fsdp":  # FSDP moves the model to its GPU unit by unit (it may not fit one GPU whole)
        model.to(info.device)
    model.train()
    wrapped = D.wrap_model(model, info)
    opt = make_optimizer(wrapped, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_factory(cfg))
    step, samples_seen = 0, 0
    if state is not None:
        D.load_optimizer_state(wrapped, opt, state["optimizer"], info)
        sched.load_state_dict(state["scheduler"])
        step, samples_seen = int(state["step"]), int(state["samples_seen"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"].cpu())

    sampler = EpochSampler(len(stage.train_set), cfg.seed)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if state is not None else None) if info.is_main else None
    bs, world = cfg.optim.batch_size, info.world_size
    end_step = cfg.optim.max_steps if stop_after_step is None else min(cfg.optim.max_steps, stop_after_step)

    def save(at_step: int) -> Path | None:
        weights = D.full_state_dict(wrapped, info, trainable_only=stage.trainable_checkpoint)  # all ranks join (FSDP gathers)
        optim_state = D.optimizer_state(wrapped, opt, info)  # likewise
        path = None
        if info.is_main:
            trainer_state = {
                "optimizer": optim_state,
                "scheduler": sched.state_dict(),
                "step": at_step,
                "samples_seen": samples_seen,
                "world_size": world,
                "torch_rng": torch.get_rng_state(),
            }
            meta = {"stage": cfg.stage, "step": at_step, "train": cfg.to_dict(), "model": stage.model_config()}
            path = ckpt.save_checkpoint(
                ckpt_root, at_step, weights, meta, trainer_state, stage.write_files, cfg.checkpoint.keep_last
            )
        D.barrier(info)
        return path

    def evaluate(at_step: int) -> dict[str, float]:
        wrapped.eval()
        metrics: dict[str, float] = {}
        with torch.no_grad(), autocast_context(cfg, info.device):
            if info.strategy == "fsdp":  # sharded: every rank takes part in the forward passes
                metrics = stage.evaluate(wrapped)
            elif info.is_main:
                metrics = stage.evaluate(D.unwrap(wrapped))
        wrapped.train()
        if info.is_main and metrics:
            log.write({"split": "eval", "step": at_step, **metrics})
        D.barrier(info)
        return metrics

    # ---- the loop ---------------------------------------------------------------------------
    last_ckpt: Path | None = resume_path
    final_eval: dict[str, float] = {}
    bar = tqdm(total=cfg.optim.max_steps, initial=step, desc=f"train[{cfg.stage}]", disable=not (progress and info.is_main))
    t0 = time.perf_counter()
    t_window, steps_window, first_step = t0, 0, step
    cpu_window = time.process_time()  # CPU seconds of this process (all threads): load-independent cost
    sums: dict[str, tuple[float, int]] = {}  # metric -> (sum, count) over the log window
    try:
        while step < end_step:
            idx = sampler.indices(samples_seen + info.rank * bs, bs)
            batch = _to_device(stage.collate([stage.train_set[i] for i in idx]), info.device)
            gen = step_generator(cfg.seed, step, info.rank)
            with autocast_context(cfg, info.device):
                loss, parts = stage.loss(wrapped, batch, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step} (lower optim.lr?)")
            loss.backward()
            if cfg.optim.grad_clip > 0:
                parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.optim.grad_clip))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            samples_seen += bs * world
            steps_window += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                if math.isfinite(v):  # a part may be undefined for a batch (e.g. no image targets)
                    s, c = sums.get(k, (0.0, 0))
                    sums[k] = (s + float(v), c + 1)
            bar.update(1)
            if step % cfg.log_every == 0 or step == end_step:
                # Same keys on every rank (a stage always returns the same parts): nan where undefined.
                keys = ["loss", *parts]
                means = D.all_reduce_mean({k: sums[k][0] / sums[k][1] if k in sums else math.nan for k in keys}, info)
                now = time.perf_counter()
                rate = steps_window * bs * world / max(now - t_window, 1e-9)
                cpu_now = time.process_time()
                if info.is_main:
                    log.write({"split": "train", "step": step, "lr": sched.get_last_lr()[0], "samples_per_s": rate,
                               "cpu_s_per_step": (cpu_now - cpu_window) / steps_window, "time_s": now - t0, **means})
                    bar.set_postfix(loss=f"{means['loss']:.4f}", sps=f"{rate:.1f}")
                sums, steps_window, t_window, cpu_window = {}, 0, now, cpu_now
            is_last = step == cfg.optim.max_steps
            if (cfg.eval.every and step % cfg.eval.every == 0) or is_last:
                final_eval = evaluate(step)
            if step % cfg.checkpoint.every == 0 or step == end_step:
                last_ckpt = save(step) or last_ckpt
    except KeyboardInterrupt:
        if step > first_step and info.world_size == 1:
            last_ckpt = save(step)
            print(f"interrupted: saved {last_ckpt}; run the same command again to resume")
        raise
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    done = step - first_step
    replicas = D.replica_digests(wrapped, info)  # DDP: every rank must hold the same weights
    if len(set(replicas)) > 1:
        raise RuntimeError(f"replicas diverged: weight digests per rank {replicas}")
    result = TrainResult(
        run_dir=run_dir,
        checkpoint=last_ckpt,
        steps=step,
        wall_s=wall,
        samples_per_s=done * bs * world / wall if wall > 0 and done else 0.0,
        final_eval=final_eval,
        model=D.unwrap(wrapped),
    )
    if info.is_main:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "loss_curves.png", title=f"{cfg.name} [{cfg.stage}]")
        summary = {"stage": cfg.stage, "steps": step, "wall_s_this_run": wall, "samples_per_s": result.samples_per_s,
                   "world_size": world, "replica_digests": replicas,
                   "train_samples": len(stage.train_set), "eval_samples": len(stage.eval_set),
                   "data_report": getattr(stage, "data_report", ""), "checkpoint": str(last_ckpt) if last_ckpt else None, "final_eval": final_eval}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return result


def _load_state(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path, trainable_only: bool = False) -> None:
    """Checkpoint weights into ``model``; ``trainable_only``: the checkpoint holds just the trainable
    ones (LoRA adapters over frozen init_from weights), every one of which must be there."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight", "base_model.model.lm_head.weight", "base_model.model.lm_head.base_layer.weight"}
    missing = [k for k in missing if k not in tied]
    if trainable_only:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        missing = [k for k in missing if k in trainable]
    if missing or unexpected:
        raise ckpt.CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model: missing {missing[:3]}, unexpected {list(unexpected)[:3]}"
            " (was it written with another model config?)"
        )
