"""Distributed training through torch's own engine.

The same ``emu-guide train`` command runs single-process or under ``torchrun`` (which sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT). Process groups use gloo on CPU and
NCCL on GPU. DDP is the default when more than one process runs; FSDP (full sharding) is an
option for models too large to replicate, and needs CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # "none", "ddp", "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU (use device: cpu or auto)")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def setup(device: str = "auto", strategy: str = "auto") -> DistInfo:
    """Initialise the process group when launched with WORLD_SIZE > 1 (torchrun); else single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world <= 1:
        if strategy in ("ddp", "fsdp"):
            # Asking for a parallel strategy in a single process is harmless: it is one replica.
            strategy = "none"
        return DistInfo(device=dev, strategy="none" if strategy == "auto" else strategy)
    if strategy == "none":
        raise RuntimeError(f"distributed: 'none' but launched with WORLD_SIZE={world}; use 'ddp' or 'fsdp'")
    if strategy == "fsdp" and dev.type != "cuda":
        raise RuntimeError("distributed: 'fsdp' needs CUDA GPUs (NCCL); use 'ddp' on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev, "ddp" if strategy == "auto" else strategy)


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP / FSDP wrapper around ``model`` (returned unchanged for a single process)."""
    if info.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # One FSDP unit per decoder block (the model's own no-split classes, e.g. Qwen3DecoderLayer): only
        # one block's full weights are gathered at a time. Ranks other than 0 may hold an empty model on
        # the meta device (a release too large for one copy per GPU in host memory): each unit is
        # materialised on this GPU, then rank 0's weights are broadcast into it (sync_module_states).
        # use_orig_params: LoRA's frozen and trainable weights share units.
        meta = any(p.is_meta for p in model.parameters())
        return FSDP(model, device_id=info.device, use_orig_params=True, auto_wrap_policy=block_wrap_policy(model),
                    sync_module_states=True,
                    param_init_fn=(lambda m: m.to_empty(device=info.device, recurse=False)) if meta else None)  # fmt: skip
    return model


def block_wrap_policy(model: torch.nn.Module):
    """FSDP auto-wrap policy: every module whose class is one of the model's ``_no_split_modules``
    (transformers names its decoder block there; peft's wrapper is looked through); None if none."""
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    names = set()
    for m in model.modules():
        names |= set(getattr(m, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    return functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=classes) if classes else None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def full_state_dict(model: torch.nn.Module, info: DistInfo, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU (gathered from all ranks under FSDP); ``trainable_only``: just
    the weights that train (LoRA adapters), which FSDP then gathers alone."""
    if info.strategy == "fsdp" and trainable_only:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Full (unsharded) tensors offloaded to CPU on rank 0 only; the frozen base is never gathered.
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        sd = get_model_state_dict(model, options=opts)
    elif info.strategy == "fsdp":
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
            sd = model.state_dict()
    else:
        module = unwrap(model)
        sd = module.state_dict()
        if trainable_only:
            keep = {n for n, p in module.named_parameters() if p.requires_grad}
            sd = {k: v for k, v in sd.items() if k in keep}
    return {k: v.detach().to("cpu") for k, v in sd.items()}


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, info: DistInfo) -> dict:
    """The optimizer's state to checkpoint. Under FSDP each rank's optimizer holds its own shards: they
    are gathered into one full state keyed by parameter name (on rank 0, the rank that saves)."""
    if info.strategy != "fsdp":
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, info: DistInfo) -> None:
    """Restore ``optimizer_state``'s result (every rank read the checkpoint; FSDP re-shards it)."""
    if info.strategy != "fsdp":
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar metrics over ranks (identity when single-process)."""
    if info.world_size <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


def replica_digests(model: torch.nn.Module, info: DistInfo) -> list[str]:
    """sha256 of each rank's weights (rank order). Under DDP they must all be equal."""
    import hashlib

    h = hashlib.sha256()
    if info.strategy != "fsdp":  # FSDP ranks hold different shards by design
        for name, t in sorted(unwrap(model).state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    if info.world_size <= 1:
        return [digest]
    out: list[str] = [""] * info.world_size
    dist.all_gather_object(out, digest)
    return out


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
