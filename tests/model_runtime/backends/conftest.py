"""A tiny random model directory: random Qwen3 + random FSQ tokenizer + word tokenizer (real classes)."""

from __future__ import annotations

import numpy as np
import pytest

CORPUS = [
    "clear the table",
    "pick up the red cup",
    "place the red cup in the rack",
    "pick up the blue block",
    "place the blue block in the bin",
    "fold the cloth",
]


def make_model_dir(path, seed: int = 0):
    from model_runtime.backends.torch_backend import save_model_dir
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.text_tokenizer import WordTokenizer
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    text = WordTokenizer.build(CORPUS)
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4), channels=(8, 8, 8), res_blocks=0, out_channels=8), seed=seed)
    layout = compact(text.vocab_size, vision.num_codes)
    cfg = LMConfig(vocab_size=layout.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                   head_dim=16, intermediate_size=64)  # fmt: skip
    lm = build_lm(cfg, seed=seed)
    return save_model_dir(path, lm, vision, text, layout, lm_config=cfg)


@pytest.fixture(scope="package")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture
def frame():
    from emu_guide.types import Frame

    rng = np.random.default_rng(0)
    return Frame(image=rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8), stamp=1.0)


