"""Train a tiny model with dida_loss on a toy task, then DiDA must decode the right images.

Toy task: the prompt names one of 4 classes; the answer is one word and a 3x4 image whose codes
are a fixed random pattern per class. The model sees noisy copies only through ``dida_loss``, so
decoding the patterns in K = 3 parallel passes checks that training and ``decode_image_dida``
agree on masks, positions and the next-token shift.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_runtime.backends.base import DecodeOptions
from model_runtime.decoding import generate_answer
from model_runtime.decoding.dida_loss import IGNORE_INDEX, build_dida_batch, dida_loss

pytestmark = pytest.mark.slow  # ~10 s: a short training run


def test_trained_tiny_model_decodes_its_images_with_dida(layout):
    from tests.model_runtime.decoding.conftest import tiny_lm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, layout.num_visual_codes, size=(4, 3, 4))
    word0 = layout.text_vocab_size - 40

    def example(c: int) -> tuple[list[int], list[int]]:
        prompt = [layout.bos, layout.extra["user"], word0 + c, layout.extra["assistant"]]
        answer = [word0 + 10 + c] + layout.serialize_image(patterns[c]) + [layout.eos]
        return prompt, answer

    rows = [example(c) for c in range(4)] * 2  # batch of 8
    t = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((8, t), layout.pad)
    labels = torch.full((8, t), IGNORE_INDEX)
    for r, (p, a) in enumerate(rows):
        ids[r, : len(p) + len(a)] = torch.tensor(p + a)
        labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
    pad = (ids != layout.pad).long()
    model = tiny_lm(layout, "sdpa", seed=1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        batch = build_dida_batch(ids, labels, layout, attention_mask=pad, generator=gen)
        out = dida_loss(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    for c in range(4):
        prompt, _ = example(c)
        opts = DecodeOptions(mode="dida", dida_steps=3, temperature=0.0, text_temperature=0.0, max_text_tokens=2)
        ans = generate_answer(model, prompt, layout, (3, 4), opts, min_images=1, end_after_image=True,
                              text_before_image=True)  # fmt: skip
        assert ans.forwards["image"] == 3
        assert ans.tokens[0] == word0 + 10 + c  # the text, autoregressively
        accuracy = float((ans.image_codes == patterns[c]).mean())
        assert accuracy >= 0.9, f"class {c}: {accuracy:.2f} of cells right"
