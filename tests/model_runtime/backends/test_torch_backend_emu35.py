"""The torch backend on a bare Qwen3 checkpoint with the emu35 layout: the path real Emu3.5 weights take.

Tiny random stand-ins with the real vocabulary (282,926 ids, 131,072 IBQ codes): a Qwen3 LM saved
as a plain checkpoint, our IBQ tokenizer in the published layout (config.yaml + model.ckpt), a
byte-level BPE text tokenizer.
"""

from __future__ import annotations

import pytest

from emu_guide.types import PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions, load_backend


@pytest.fixture(scope="module")
def emu35_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from model_runtime.layout import emu35
    from model_runtime.lm import LMConfig, build_lm, save_lm
    from model_runtime.tokenizers.ibq import IBQConfig, IBQTokenizer

    path = tmp_path_factory.mktemp("emu35")
    lay = emu35()
    cfg = LMConfig(vocab_size=lay.vocab_size, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                   intermediate_size=32)  # fmt: skip
    save_lm(build_lm(cfg), path)  # config.json + model.safetensors at the top, as a released checkpoint
    ibq = IBQTokenizer.from_config(IBQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                                             resolution=16, n_embed=lay.num_visual_codes, embed_dim=4), seed=0)  # fmt: skip
    ibq.save(path / "vision_tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["You are a helpful assistant for vla task. USER: clear the table ASSISTANT:"] * 3, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(path))
    return path


def test_bare_checkpoint_with_emu35_layout(emu35_dir, frame):
    backend = load_backend("torch", model_path=emu35_dir, layout="emu35", image_size=(8, 8))
    assert backend.layout.name == "emu35" and backend.image_size == (8, 8)
    try:
        step = backend.next_step(frame, "clear the table", [], DecodeOptions(dida_steps=2, max_text_tokens=3))
        assert isinstance(step, PlanStep)
    except BackendError as exc:  # random weights may end the answer without an image: a named parse error
        assert "does not parse" in str(exc)
    from model_runtime.decoding import generate_answer
    from model_runtime.prompt import build_prompt

    codes = backend.vision.encode_one(backend.prepare_frame(frame))
    assert codes.shape == (4, 4)
    prompt = build_prompt(backend.layout, backend.text, "clear the table", [], codes)
    assert prompt[0] == backend.layout.bos and backend.layout.boi in prompt
    answer = generate_answer(backend.lm, prompt, backend.layout, (4, 4), DecodeOptions(dida_steps=2, max_text_tokens=3),
                             min_images=1, end_after_image=True, text_id_limit=backend.text.vocab_size)  # fmt: skip
    assert answer.image_codes.shape == (4, 4) and answer.forwards["image"] == 2
    assert backend.vision.decode_one(answer.image_codes).shape == (8, 8, 3)


def test_bare_checkpoint_layout_errors(emu35_dir, tmp_path):
    with pytest.raises(BackendError, match="unknown token layout"):
        load_backend("torch", model_path=emu35_dir, layout="emu4")
    with pytest.raises(BackendError, match="vocab_size|codes but layout"):
        load_backend("torch", model_path=emu35_dir, layout="emu3", image_size=(8, 8))
    with pytest.raises(BackendError, match="guidance.json: missing"):
        load_backend("torch", model_path=emu35_dir)  # without a layout it must be a model directory
