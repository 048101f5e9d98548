"""The CUDA path of decoding (bf16, CUDA generators, SDPA kernels). Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_runtime.backends.base import DecodeOptions
from model_runtime.decoding import ForwardCounter, KVState, answer_grammar, generate_answer

pytestmark = pytest.mark.gpu


def test_dida_and_ar_on_cuda_bf16(layout):
    from tests.model_runtime.decoding.conftest import tiny_lm

    model = tiny_lm(layout, "sdpa").to("cuda", torch.bfloat16)
    prompt = [layout.bos, layout.extra["user"]] + list(range(40, 60)) + [layout.extra["assistant"]]
    for mode in ("dida", "ar"):
        opts = DecodeOptions(mode=mode, dida_steps=4, guidance_scale=2.0, max_text_tokens=4, seed=1)
        a = generate_answer(model, prompt, layout, (4, 4), opts, uncond_prompt_ids=prompt[:2] + prompt[-3:],
                            **answer_grammar(layout))  # fmt: skip
        b = generate_answer(model, prompt, layout, (4, 4), opts, uncond_prompt_ids=prompt[:2] + prompt[-3:],
                            **answer_grammar(layout))  # fmt: skip
        assert a.tokens == b.tokens  # CUDA generators are seeded too
        if a.image_codes is not None:
            assert np.all(a.image_codes < layout.num_visual_codes)


def test_peek_equals_full_forward_on_cuda(layout):
    from tests.model_runtime.decoding.conftest import tiny_lm

    model = tiny_lm(layout, "sdpa").to("cuda", torch.float32)
    prompt = list(range(40, 70))
    block = layout.serialize_image(np.arange(12).reshape(3, 4))
    with torch.no_grad():
        state, _ = KVState.prefill(ForwardCounter(model), prompt)
        peek = state.peek(block, torch.arange(len(block), device="cuda"))[0]
        n = len(prompt) + len(block)
        allowed = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
        allowed[len(prompt) :, len(prompt) :] = True
        mask = torch.zeros(n, n, device="cuda").masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
        full = model(input_ids=torch.tensor([prompt + block], device="cuda"), attention_mask=mask,
                     position_ids=torch.arange(n, device="cuda")[None]).logits[0, len(prompt):]  # fmt: skip
    torch.testing.assert_close(peek, full, atol=1e-4, rtol=1e-3)
