"""What a training stage provides to the one loop (model, data, loss, evaluation, files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_embodied.train.config import TrainConfig
from finetune_embodied.train.distributed import DistInfo


class Stage:
    """Base class: subclasses fill ``train_set`` / ``eval_set`` and implement the hooks."""

    name = ""
    # True: checkpoints hold only the trainable weights (LoRA adapters); the frozen rest comes from
    # init_from again when the run resumes or is exported (layout-emu35 stages with LoRA).
    trainable_checkpoint = False

    def __init__(self, cfg: TrainConfig, info: DistInfo) -> None:
        self.cfg = cfg
        self.info = info
        self.train_set: Sequence[Any] = []
        self.eval_set: Sequence[Any] = []

    # ---- model ------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (the loop seeds torch first)."""
        raise NotImplementedError

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap after (optional) initial weights are loaded, e.g. with LoRA adapters."""
        return model

    def load_init(self, model: torch.nn.Module, path: str | Path) -> None:
        """Start from the weights of a previous stage's checkpoint."""
        raise NotImplementedError(f"stage {self.name!r} cannot start from init_from={str(path)!r}")

    def model_config(self) -> dict[str, Any]:
        raise NotImplementedError

    # ---- data, loss, evaluation ---------------------------------------------------------------
    def collate(self, samples: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss to minimise, named float parts to log)."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out metrics (called under no_grad with the model in eval mode)."""
        raise NotImplementedError

    def write_files(self, directory: Path) -> None:
        """Files a checkpoint carries besides the weights (tokenizers, layout)."""

    def eval_samples(self) -> list[Any]:
        n = min(len(self.eval_set), self.cfg.eval.max_samples)
        # Evenly spaced over the held-out set: every held-out episode (and task) is represented.
        picks = np.linspace(0, len(self.eval_set) - 1, n).round().astype(int) if n else []
        return [self.eval_set[int(i)] for i in picks]


def split_heldout(items: list[Any], groups: list[int], fraction: float) -> tuple[list[Any], list[Any]]:
    """Split by group (episode): ``fraction`` of the distinct groups, evenly spaced, is held out.

    Holding out whole episodes keeps frames of one episode from leaking into the evaluation;
    spacing them evenly over the recording (which is task-major) keeps every task represented.
    At least one group is held out when fraction > 0 and there are two groups or more.
    """
    distinct = sorted(set(groups))
    n_eval = int(round(len(distinct) * fraction))
    if fraction > 0 and len(distinct) >= 2:
        n_eval = max(1, n_eval)
    n_eval = min(n_eval, len(distinct) - 1) if distinct else 0
    held = {distinct[(i + 1) * len(distinct) // n_eval - 1] for i in range(n_eval)}
    train = [x for x, g in zip(items, groups) if g not in held]
    ev = [x for x, g in zip(items, groups) if g in held]
    return train, ev
