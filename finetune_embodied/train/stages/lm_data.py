"""LM-stage data from a LeRobot v3 recording: episodes -> ``TrainingSequence``s.

Frames are encoded by the trained vision tokenizer (``cfg.tokenizer``); text by a word tokenizer
built from the dataset's instructions and step texts, or the one of ``cfg.init_from`` (a later
stage must keep the vocabulary the model was trained with). Bad episodes raise a
``DatasetError`` naming file and episode, or - with ``data.on_error: skip`` - are counted and
reported (``data_report``), never dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emu_ros.layout import TokenLayout, compact
from emu_ros.text_tokenizer import TOKENIZER_FILE, WordTokenizer


def text_tokenizer_for(cfg, texts_fn) -> WordTokenizer:
    """The init_from checkpoint's vocabulary when there is one, else built from the data's texts."""
    if cfg.init_from and (Path(cfg.init_from) / TOKENIZER_FILE).is_file():
        return WordTokenizer.load(cfg.init_from)
    return WordTokenizer.build(texts_fn())


def dataset_sequences(cfg, info) -> tuple[WordTokenizer, TokenLayout, list[Any], list[int], str]:
    from emu_ros.prompt import PLAN_REQUEST, PLAN_SEPARATOR
    from finetune_embodied.datasets.lerobot_v3 import LeRobotV3Reader
    from finetune_embodied.sequences import SequenceDataset, dataset_texts
    from finetune_embodied.train.stages.tokenizer_stage import camera_key, load_vision_tokenizer

    d = cfg.data
    if not cfg.tokenizer:
        raise ValueError("LM stages on a dataset need `tokenizer:` (a trained vision tokenizer or its checkpoint)")
    vision = load_vision_tokenizer(cfg.tokenizer)
    reader = LeRobotV3Reader(d.path, on_error=d.on_error)
    key = camera_key(reader.camera_keys, d.camera, d.path)
    plan_words = [PLAN_REQUEST, PLAN_SEPARATOR] if d.plan_sequences else []
    text_tok = text_tokenizer_for(
        cfg, lambda: dataset_texts(reader.iter_episodes(load_images=False)) + list(d.extra_texts) + plan_words)
    layout = compact(text_tok.vocab_size, vision.num_codes)
    unknown = sorted({w for t in dataset_texts(reader.iter_episodes(load_images=False)) for w in text_tok.unknown_words(t)})
    if unknown:
        raise ValueError(
            f"dataset {d.path}: words not in the vocabulary of init_from {cfg.init_from!r}: {unknown[:10]}"
            " (train next_token from scratch on this data, or record with the same phrasing)"
        )
    ds = SequenceDataset(
        reader.iter_episodes(),
        layout,
        text_tok,
        vision,
        camera_key=key,
        visual_loss_weight=d.visual_loss_weight,
        max_history=d.max_history,
        seed=cfg.seed,
        plan_sequences=d.plan_sequences,
    )
    groups = [s.episode_index for s in ds.samples]
    return text_tok, layout, list(ds.sequences), groups, reader.report.summary() if reader.report.count else ""
