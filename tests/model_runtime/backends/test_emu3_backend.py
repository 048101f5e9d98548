"""Emu3Backend on a tiny random Emu3ForConditionalGeneration built offline (real transformers classes)."""

from __future__ import annotations

import json

import pytest

from emu_guide.types import PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions, load_backend

pytestmark = pytest.mark.slow  # builds a 12M-parameter Emu3 (184,622-id vocabulary): ~10 s on a loaded host


def _tiny_tokenizer(directory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["You are a helpful assistant. USER: clear the table ASSISTANT: pick up the red cup"] * 3
    tok.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(directory))


@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory):
    from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3TextConfig, Emu3VQVAEConfig

    vq = Emu3VQVAEConfig(codebook_size=32_768, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
                         num_res_blocks=1, attn_resolutions=[], hidden_size=64, num_attention_heads=1,
                         temporal_downsample_factor=4)  # fmt: skip
    text = Emu3TextConfig(vocab_size=184_622, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)  # fmt: skip
    model = Emu3ForConditionalGeneration(Emu3Config(vq_config=vq.to_dict(), text_config=text.to_dict(), vocabulary_map={}))
    path = tmp_path_factory.mktemp("emu3")
    model.save_pretrained(path)
    _tiny_tokenizer(path)
    return path


def test_emu3_backend_next_step(emu3_dir, frame):
    backend = load_backend("emu3", model_path=emu3_dir, image_size=(8, 8))
    assert backend.layout.name == "emu3" and backend.image_size == (8, 8)
    assert backend.dida_adapted is False and backend.default_mode.value == "ar"  # released weights: next-token only
    with pytest.raises(BackendError, match="never DiDA-adapted.*force_dida=True"):
        backend.next_step(frame, "clear the table", [], DecodeOptions(mode="dida", dida_steps=2, max_text_tokens=4))
    outcomes = {}
    for mode in ("dida", "ar"):
        opts = DecodeOptions(mode=mode, dida_steps=2, max_text_tokens=4, force_dida=True)
        try:
            step = backend.next_step(frame, "clear the table", [], opts)
        except BackendError as exc:
            # Random weights may write text and EOS with no image: the error must say so, and say
            # it truly (the decoded answer really has no image block and is not the final phrase).
            tokens = backend.last_answer.tokens
            assert "does not parse" in str(exc) and "no subgoal image" in str(exc), exc
            assert backend.layout.boi not in tokens and tokens[-1] == backend.layout.eos
            assert len(tokens) <= 4 + 1  # max_text_tokens, then EOS was forced
            outcomes[mode] = "no image"
            continue
        assert isinstance(step, PlanStep) and step.index == 0
        if not step.is_final:
            assert step.subgoal_tokens.shape == (4, 4) and step.subgoal_image.shape == (8, 8, 3)
            assert step.decode_mode.value == mode
        outcomes[mode] = "final" if step.is_final else "step"
    assert set(outcomes) == {"dida", "ar"}
    # The image path through Emu3's own forward (4D masks, cache, CFG batch): force one image.
    import numpy as np

    from model_runtime.decoding import generate_answer
    from model_runtime.prompt import build_prompt, build_unconditional_prompt, parse_answer

    codes = backend.vision.encode_one(backend.prepare_frame(frame))
    prompt = build_prompt(backend.layout, backend.text, "clear the table", [], codes)
    uncond = build_unconditional_prompt(backend.layout, backend.text, "clear the table", [], codes)
    for mode in ("dida", "ar"):
        opts = DecodeOptions(mode=mode, dida_steps=2, max_text_tokens=3, guidance_scale=2.0)
        answer = generate_answer(backend.lm, prompt, backend.layout, (4, 4), opts, uncond_prompt_ids=uncond,
                                 min_images=1, end_after_image=True, text_id_limit=backend.text.vocab_size)  # fmt: skip
        assert answer.image_codes.shape == (4, 4) and answer.tokens[-1] == backend.layout.eos
        assert backend.vision.decode_one(answer.image_codes).shape == (8, 8, 3)
        assert all(t < backend.text.vocab_size for t in answer.tokens[: answer.tokens.index(backend.layout.boi)])
        # the backend's own answer parser reads the image back exactly
        parsed = parse_answer(backend.layout, backend.text, answer.tokens, expected_grid=(4, 4))
        assert not parsed.is_final and np.array_equal(parsed.codes, answer.image_codes)
        assert answer.forwards["image"] == (2 if mode == "dida" else 16)  # K passes vs one per cell
    assert np.all(codes < backend.layout.num_visual_codes)


def test_emu3_backend_errors(emu3_dir, tmp_path):
    with pytest.raises(BackendError, match="model_path is required"):
        load_backend("emu3")
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((emu3_dir / "config.json").read_text())
    cfg["vq_config"]["codebook_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackendError, match="wrong layout"):
        load_backend("emu3", model_path=bad)
    cfg["vq_config"]["codebook_size"] = 32_768
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackendError, match="weights missing"):
        load_backend("emu3", model_path=bad)
    (bad / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(BackendError, match="expected 'emu3'"):
        load_backend("emu3", model_path=bad)
    # An original BAAI/Emu3-* checkpoint (remote code): refused, naming the -hf conversions.
    (bad / "config.json").write_text(json.dumps({"model_type": "Emu3", "architectures": ["Emu3ForCausalLM"],
                                                 "vocab_size": 184_622}))  # fmt: skip
    with pytest.raises(BackendError, match="original BAAI Emu3 checkpoint.*Emu3-Gen-hf"):
        load_backend("emu3", model_path=bad)


def test_grounded_names_are_encoded_as_inside_a_sentence(emu3_dir, frame):
    """Byte-level BPE writes a mid-sentence word with its leading space: names must match that form."""
    backend = load_backend("emu3", model_path=emu3_dir, image_size=(8, 8))
    options = DecodeOptions(known_names=("red cup", "blue cup"), allowed_names=("blue cup",), max_text_tokens=4, dida_steps=2)
    known, allowed = backend.mention_ids(options)
    sentence = backend.text.encode("pick up the red cup")
    assert sentence[-len(known[0]) :] == known[0] and known[0] != backend.text.encode("red cup")
    assert allowed == [known[1]]
    try:  # the whole step runs under the constraint on the real Emu3 classes
        backend.next_step(frame, "clear the table", [], options)
    except BackendError as exc:  # random weights: a parse error is named, never a crash
        assert "does not parse" in str(exc)
