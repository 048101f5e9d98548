"""LM-stage data from a LeRobot v3 recording: episodes -> ``TrainingSequence``s.

Frames are encoded by the trained vision tokenizer (``cfg.tokenizer``); text by a word tokenizer
built from the dataset's instructions and step texts, or the one of ``cfg.init_from`` (a later
stage must keep the vocabulary the model was trained with). Bad episodes raise a
``DatasetError`` naming file and episode, or - with ``data.on_error: skip`` - are counted and
reported (``data_report``), never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from model_runtime.layout import TokenLayout, compact
from model_runtime.text_tokenizer import TOKENIZER_FILE, WordTokenizer


def text_tokenizer_for(cfg, texts_fn) -> WordTokenizer:
    """The init_from checkpoint's vocabulary when there is one, else built from the data's texts."""
    if cfg.init_from and (Path(cfg.init_from) / TOKENIZER_FILE).is_file():
        return WordTokenizer.load(cfg.init_from)
    return WordTokenizer.build(texts_fn())


def dataset_sequences(cfg, info) -> tuple[WordTokenizer, TokenLayout, list[Any], list[int], str]:
    from finetune_embodied.datasets.lerobot_v3 import LeRobotV3Reader
    from finetune_embodied.sequences import SequenceDataset, dataset_texts
    from finetune_embodied.train.stages.tokenizer_stage import camera_key, load_tokenizer_or_checkpoint
    from model_runtime.prompt import PLAN_REQUEST, PLAN_SEPARATOR

    d = cfg.data
    if not cfg.tokenizer:
        raise ValueError("LM stages on a dataset need `tokenizer:` (a trained vision tokenizer or its checkpoint)")
    vision = load_tokenizer_or_checkpoint(cfg.tokenizer)
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
    cache = _cache_path(cfg, vision_path=cfg.tokenizer, words=text_tok.words if hasattr(text_tok, "words") else None)
    if cache is not None and cache.is_file():
        # The next_token and dida stages read the same episodes: the second reuses the first's work.
        import pickle

        with open(cache, "rb") as f:
            sequences, groups = pickle.load(f)
        print(f"[data] {len(sequences)} sequences from the cache {cache}")
        return text_tok, layout, sequences, groups, reader.report.summary() if reader.report.count else ""
    from tqdm.auto import tqdm

    # Decoding and tokenising every episode takes minutes on a large recording: show it.
    episodes = tqdm(reader.iter_episodes(), total=reader.num_episodes, desc="[data] episodes -> sequences",
                    mininterval=10, disable=not getattr(info, "is_main", True))
    ds = SequenceDataset(
        episodes,
        layout,
        text_tok,
        vision,
        camera_key=key,
        visual_loss_weight=d.visual_loss_weight,
        max_history=d.max_history,
        mid_samples_per_step=d.mid_samples_per_step,
        seed=cfg.seed,
        plan_sequences=d.plan_sequences,
    )
    groups = [s.episode_index for s in ds.samples]
    if cache is not None and not reader.report.count:  # a run that skipped bad episodes is not cached
        _write_cache(cache, (list(ds.sequences), groups))
    return text_tok, layout, list(ds.sequences), groups, reader.report.summary() if reader.report.count else ""


def _cache_path(cfg, vision_path: str, words: list[str] | None) -> Path | None:
    """Where this exact data (dataset files, tokenizer weights, vocabulary, sampling settings) is
    cached, or None when it cannot be keyed (a tokenizer without a weights file, a non-word vocabulary)."""
    from finetune_embodied.train.checkpoint import sha256_file

    d = cfg.data
    root = Path(d.path)
    weights = sorted(Path(vision_path).rglob("*.safetensors")) if vision_path else []
    if not weights or words is None:
        return None
    key = {
        "dataset": str(root.resolve()),
        "files": sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in root.rglob("*") if p.is_file()),
        "tokenizer": [sha256_file(p) for p in weights],
        "words": list(words),
        "settings": [d.camera, d.visual_loss_weight, d.max_history, d.mid_samples_per_step, d.plan_sequences, cfg.seed],
        "format": 1,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    from emu_guide.paths import artifacts_root

    return artifacts_root() / "cache" / "sequences" / f"{digest}.pkl"


def _write_cache(path: Path, payload: Any) -> None:
    """Best effort: written aside and renamed; a full disk only costs the next stage a rebuild."""
    import pickle

    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"[data] sequence cache not written ({exc}); the next stage rebuilds the sequences")
