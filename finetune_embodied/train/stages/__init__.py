"""Training stages: each one says what model, data, loss and evaluation the one loop uses."""

from __future__ import annotations

from finetune_embodied.train.config import TrainConfig
from finetune_embodied.train.distributed import DistInfo
from finetune_embodied.train.stages.base import Stage


def make_stage(cfg: TrainConfig, info: DistInfo) -> Stage:
    """The stage object for ``cfg.stage`` (imports only what that stage needs)."""
    if cfg.stage == "tokenizer":
        from finetune_embodied.train.stages.tokenizer_stage import TokenizerStage

        return TokenizerStage(cfg, info)
    if cfg.stage == "verifier":
        from finetune_embodied.train.stages.verifier_stage import VerifierStage

        return VerifierStage(cfg, info)
    if cfg.stage == "perception":
        from finetune_embodied.train.stages.perception_stage import PerceptionStage

        return PerceptionStage(cfg, info)
    if cfg.layout == "emu35":  # an Emu3.5 release-format checkpoint, its own tokenizers
        from finetune_embodied.train.stages.release import ReleaseDidaStage, ReleaseLMStage

        return ReleaseDidaStage(cfg, info) if cfg.stage == "dida" else ReleaseLMStage(cfg, info)
    from finetune_embodied.train.stages.lm_stages import DidaStage, LMStage

    return DidaStage(cfg, info) if cfg.stage == "dida" else LMStage(cfg, info)


__all__ = ["Stage", "make_stage"]
