"""LM-stage data from a LeRobot recording (v3.x or v2.x): episodes -> ``TrainingSequence``s.

Episodes without step labels are labelled first (``label.when``, finetune_embodied.labelling).

Frames are encoded by the trained vision tokenizer (``cfg.tokenizer``); text by a word tokenizer
built from the dataset's instructions and step texts, or the one of ``cfg.init_from`` (a later
stage must keep the vocabulary the model was trained with). Bad episodes raise a
``DatasetError`` naming file and episode, or - with ``data.on_error: skip`` - are counted and
reported (``data_report``), never dropped silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from model_runtime.layout import TokenLayout, compact
from model_runtime.text_tokenizer import WordTokenizer


def text_tokenizer_for(cfg, texts_fn) -> WordTokenizer:
    """The init_from checkpoint's (or model directory's) vocabulary when there is one, extended by the
    data's new words with ``data.new_words: extend``; else built from the data's texts."""
    from finetune_embodied.train.vocabulary import extend_vocabulary, init_vocabulary

    trained = init_vocabulary(cfg.init_from)
    if trained is None:
        return WordTokenizer.build(texts_fn())
    return extend_vocabulary(trained, texts_fn()) if cfg.data.new_words == "extend" else trained


def dataset_sequences(cfg, info) -> tuple[WordTokenizer, TokenLayout, list[Any], list[int], str]:
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.sequences import SequenceDataset, dataset_texts
    from finetune_embodied.train.stages.tokenizer_stage import announce_resize, camera_key, load_tokenizer_or_checkpoint
    from model_runtime.prompt import PLAN_REQUEST, PLAN_SEPARATOR

    d = cfg.data
    if not cfg.tokenizer:
        raise ValueError("LM stages on a dataset need `tokenizer:` (a trained vision tokenizer or its checkpoint)")
    vision = load_tokenizer_or_checkpoint(cfg.tokenizer)
    reader = open_dataset(d.path, on_error=d.on_error, first_episodes=d.first_episodes)
    key = camera_key(reader.camera_keys, d.camera, d.path)
    announce_resize(reader, key, vision.image_size[0] if vision.image_size else d.image_size)
    labels, label_line = step_labels(cfg, reader, key)

    def labelled(load_images: bool):
        from finetune_embodied.labelling import apply_labels

        return apply_labels(reader.iter_episodes(load_images=load_images), labels)

    from finetune_embodied.record import load_step_kinds

    # Which frames are the recorder's injected mistakes: never a target, never in a history.
    step_kinds = load_step_kinds(d.path) if not labels else None
    plan_words = [PLAN_REQUEST, PLAN_SEPARATOR] if d.plan_sequences else []
    perceptions, perception_words, pixels, classes = None, [], None, None
    if d.answer == "perceive":
        from finetune_embodied.record import PERCEPTION_FILE, load_perceptions
        from model_runtime.prompt import perception_texts

        perceptions = load_perceptions(d.path)
        if perceptions is None:
            raise ValueError(f"data.answer is 'perceive' but dataset {d.path} has no {PERCEPTION_FILE}"
                             " (record it with this version of emu-guide record)")
        perception_words = perception_texts() + sorted({t for frames in perceptions.values() for t in frames})
        if cfg.perception_aux.weight:
            from finetune_embodied.sequences import perception_object_classes

            pixels = perception_pixels(cfg)
            classes = perception_object_classes(sorted({t for frames in perceptions.values() for t in frames}))
    text_tok = text_tokenizer_for(
        cfg, lambda: dataset_texts(labelled(False)) + list(d.extra_texts) + plan_words + perception_words)
    layout = compact(text_tok.vocab_size, vision.num_codes)
    unknown = sorted({w for t in dataset_texts(labelled(False)) + perception_words for w in text_tok.unknown_words(t)})
    if unknown:
        raise ValueError(
            f"dataset {d.path}: words not in the vocabulary of init_from {cfg.init_from!r}: {unknown[:10]}"
            " (data.new_words=extend adds them to the vocabulary; or train next_token from scratch on this data)"
        )
    words = text_tok.words if hasattr(text_tok, "words") else None
    cache = _cache_path(cfg, vision_path=cfg.tokenizer, words=words, frame_cells=bool(cfg.perception_aux.weight))
    if cache is not None and not cache.is_file() and not cfg.perception_aux.weight:
        # The same sequences built with the probe's cell targets (next_token with perception_aux, then
        # dida without it) serve as they are: the targets are only read when perception_aux is on.
        with_cells = _cache_path(cfg, vision_path=cfg.tokenizer, words=words, frame_cells=True)
        cache = with_cells if with_cells.is_file() else cache

    def report() -> str:
        parts = [reader.report.summary()] if reader.report.count else []
        return "\n".join(parts + ([label_line] if label_line else []))

    if cache is not None and cache.is_file():
        # The next_token and dida stages read the same episodes: the second reuses the first's work.
        import pickle

        with open(cache, "rb") as f:
            sequences, groups = pickle.load(f)
        print(f"[data] {len(sequences)} sequences from the cache {cache}")
        return text_tok, layout, sequences, groups, report()
    from tqdm.auto import tqdm

    # Decoding and tokenising every episode takes minutes on a large recording: show it.
    episodes = tqdm(labelled(True), total=reader.num_episodes, desc="[data] episodes -> sequences",
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
        unconfirmed_samples=d.unconfirmed_samples,
        perceptions=perceptions,
        perception_pixels=pixels,
        object_classes=classes,
        step_kinds=step_kinds,
    )
    groups = [s.episode_index for s in ds.samples]
    if cache is not None and not reader.report.count:  # a run that skipped bad episodes is not cached
        _write_cache(cache, (list(ds.sequences), groups))
    return text_tok, layout, list(ds.sequences), groups, report()


def perception_pixels(cfg) -> dict[int, list]:
    """episode_index -> per frame the [u, v] of each object its perception lists (``perception_aux``)."""
    from finetune_embodied.record import PERCEPTION_FILE, load_perceptions

    with_pixels = load_perceptions(cfg.data.path, pixels=True)
    if with_pixels is None:
        raise ValueError(f"perception_aux needs object pixels in {cfg.data.path}/{PERCEPTION_FILE}"
                         " (recorded by this version of emu-guide record)")
    return {e: [p for _, p in frames] for e, frames in with_pixels.items()}


def perception_classes(cfg) -> list[str]:
    """The object names of the dataset's perception targets, sorted: the probe's classes (1 + index)."""
    from finetune_embodied.record import load_perceptions
    from finetune_embodied.sequences import perception_object_classes

    texts = load_perceptions(cfg.data.path) or {}
    return perception_object_classes(sorted({t for frames in texts.values() for t in frames}))


def step_labels(cfg, reader, key: str) -> tuple[dict, str]:
    """Labels for the episodes that need them (``label.when``), and the line saying what was done.

    ``missing``: episodes without subtask labels are labelled (finetune_embodied.labelling);
    ``always``: every episode is, its own labels (if any) only used to score the detection;
    ``never``: an unlabelled episode is an error naming the setting."""
    from finetune_embodied.labelling import label_dataset

    lc = cfg.label
    if lc.when == "never":
        first = next((e for e in reader.iter_episodes(load_images=False) if e.subtasks is None), None)
        if first is not None:
            raise ValueError(f"dataset {cfg.data.path}: episode {first.episode_index} has no step (subtask) labels and "
                             "label.when is 'never'; set label.when=missing to find steps from the data")
        return {}, ""
    if lc.when == "missing" and reader.subtasks is not None and "subtask_index" in reader.features:
        return {}, ""  # every frame carries a label (a bad episode is the reader's error, not ours)
    rep = label_dataset(reader, lc, key, only_missing=lc.when == "missing")
    if not rep.labels:
        return {}, ""
    line = rep.summary()
    print(line)
    return rep.labels, line


def _cache_path(cfg, vision_path: str, words: list[str] | None, frame_cells: bool) -> Path | None:
    """Where this exact data (dataset files, tokenizer weights, vocabulary, sampling settings, with or
    without the probe's ``frame_cells``) is cached, or None when it cannot be keyed (a tokenizer
    without a weights file, a non-word vocabulary)."""
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
        "settings": [d.camera, d.visual_loss_weight, d.max_history, d.mid_samples_per_step, d.plan_sequences, cfg.seed]
        + ([d.answer] if d.answer != "step" else [])  # old caches of the plain format stay valid
        + (["unconfirmed"] if d.unconfirmed_samples else [])
        + ([f"first_episodes={d.first_episodes}"] if d.first_episodes else [])
        + (["frame_cells"] if frame_cells else []),
        "label": dataclasses.asdict(cfg.label),  # labels found from the data depend on these
        "format": 2,  # 2: rest-of-plan answers without the unconfirmed samples' repeats; step kinds
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
