"""A "perceive" model's perception-only decode (``perceive``) and the reuse of a perception as the
next answer's start (``DecodeOptions.perception``: teacher-forced, not decoded again)."""

from __future__ import annotations

import pytest
from conftest import CORPUS

from emu_guide.types import PlanStep
from model_runtime.backends.base import BackendError, DecodeOptions
from model_runtime.prompt import format_perception, parse_perception, perception_texts
from model_runtime.session import GuidanceSession

SEEN = format_perception([{"name": "red cup", "cell": "left back"}, {"name": "blue block", "cell": "middle front"}],
                         None)


def _perceiving_model_dir(path, seed: int = 0):
    from model_runtime.backends.torch_backend import save_model_dir
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.text_tokenizer import WordTokenizer
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    text = WordTokenizer.build(CORPUS + perception_texts())
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4), channels=(8, 8, 8), res_blocks=0,
                                                out_channels=8), seed=seed)
    layout = compact(text.vocab_size, vision.num_codes)
    cfg = LMConfig(vocab_size=layout.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                   head_dim=16, intermediate_size=64)
    return save_model_dir(path, build_lm(cfg, seed=seed), vision, text, layout, lm_config=cfg,
                          answer_format="perceive")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from model_runtime.backends.torch_backend import TorchBackend

    return TorchBackend(model_path=_perceiving_model_dir(tmp_path_factory.mktemp("perceiving")))


OPTS = DecodeOptions(mode="ar", max_text_tokens=10)
HISTORY = [PlanStep(0, "pick up the red cup")]


def test_perceive_decodes_the_answer_up_to_the_marker_and_stops(backend, frame):
    seen = backend.perceive(frame, "clear the table", HISTORY, OPTS)
    ids = backend.text.encode(seen.text)
    marker = backend.text.encode(".")[0]
    assert ids[-1] == marker and marker not in ids[:-1] and 1 < len(ids) <= OPTS.max_text_tokens + 1
    assert seen.timings_ms["tokens"] == len(ids) and seen.timings_ms["total"] > 0
    # An untrained model's perception rarely parses: it comes back with the parser's reason.
    assert (seen.perception is None) == bool(seen.error)
    # The same prompt undivided: the full answer starts with exactly these tokens (greedy text).
    try:
        backend.next_step(frame, "clear the table", HISTORY, OPTS)
    except BackendError as exc:  # the answer decoded, its perception did not parse
        assert "does not parse" in str(exc)
    assert backend.last_answer.tokens[: len(ids)] == ids


def test_a_given_perception_is_the_next_answers_start(backend, frame):
    step = backend.next_step(frame, "clear the table", HISTORY, DecodeOptions(mode="ar", max_text_tokens=10,
                                                                               perception=SEEN))
    given = backend.text.encode(SEEN)
    assert backend.last_answer.tokens[: len(given)] == given
    assert step.perception == parse_perception(SEEN) and step.timings_ms["perception_given"] == len(given)
    marker = backend.text.encode(".")[0]
    assert marker not in backend.last_answer.tokens[len(given):]  # one perception per answer
    assert step.is_final or step.subgoal_image is not None


def test_a_streamed_sentence_carries_the_given_perception(backend, frame):
    streamed: list[PlanStep] = []
    step = backend.next_step(frame, "clear the table", HISTORY, DecodeOptions(mode="ar", max_text_tokens=10,
                                                                               perception=SEEN, on_text=streamed.append))
    if step.is_final:
        assert streamed == []
    else:
        [partial] = streamed
        assert (partial.index, partial.text, partial.perception) == (1, step.text, parse_perception(SEEN))


def test_teacher_forcing_the_models_own_perception_changes_nothing(backend, frame, monkeypatch):
    """Giving the model's own perception back reproduces the undivided answer token for token. (An
    untrained model's perception does not parse, so the parser accepts anything here.)"""
    import model_runtime.prompt as prompt

    monkeypatch.setattr(prompt, "parse_perception", lambda text: {"objects": [], "holding": None})
    for history in ([], HISTORY):
        seen = backend.perceive(frame, "clear the table", history, OPTS)
        assert seen.perception is not None
        backend.next_step(frame, "clear the table", history, OPTS)
        undivided = list(backend.last_answer.tokens)
        reused = backend.next_step(frame, "clear the table", history, DecodeOptions(mode="ar", max_text_tokens=10,
                                                                                     perception=seen.text))
        assert backend.last_answer.tokens == undivided and reused.timings_ms["perception_given"] > 0


def test_session_perceives_with_its_done_steps(backend, frame):
    session = GuidanceSession(backend, "clear the table", OPTS)
    assert session.perceives
    seen = session.perceive(frame)
    assert seen.text.endswith(".")
    step = session.next_step(frame, perception=SEEN)
    assert step.perception == parse_perception(SEEN)


def test_refusals_name_the_problem(backend, frame, model_dir):
    from model_runtime.backends.torch_backend import TorchBackend

    with pytest.raises(BackendError, match="does not parse"):
        backend.next_step(frame, "clear the table", [], DecodeOptions(perception="red cup left back"))
    with pytest.raises(BackendError, match="vocabulary lacks"):
        backend.next_step(frame, "clear the table", [], DecodeOptions(
            perception=format_perception([{"name": "green teapot", "cell": "left back"}], None)))
    with pytest.raises(ValueError, match="perception must be"):
        DecodeOptions(perception="  ")
    plain = TorchBackend(model_path=model_dir)  # the plain answer format
    with pytest.raises(BackendError, match="has no scene perceiver: it cannot say what it sees"):
        plain.perceive(frame, "clear the table", [])
    with pytest.raises(BackendError, match="has no scene perceiver"):
        plain.next_step(frame, "clear the table", [], DecodeOptions(perception=SEEN))
    session = GuidanceSession(plain, "clear the table")
    assert not session.perceives
    with pytest.raises(BackendError, match="does not perceive"):
        session.perceive(frame)
