"""GuidanceSession over the real torch backend with a tiny random model."""

from __future__ import annotations

import pytest

from model_runtime.backends.base import BackendError, DecodeOptions, load_backend
from model_runtime.session import GuidanceSession, SessionError
from tests.model_runtime.backends.conftest import make_model_dir


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return load_backend("torch", model_path=make_model_dir(tmp_path_factory.mktemp("m")))


@pytest.fixture
def frame():
    import numpy as np

    from emu_guide.types import Frame

    return Frame(image=np.full((40, 40, 3), 90, np.uint8))


def test_session_history_and_replan(backend, frame):
    s = GuidanceSession(backend, "clear the table", DecodeOptions(seed=1, dida_steps=2, max_text_tokens=6))
    step = s.next_step(frame)
    assert step.index == 0 and s.pending is step
    if step.is_final:
        with pytest.raises(SessionError):
            s.mark_done(step)
        return
    s.mark_done(step)
    assert s.history == [step] and s.pending is None
    with pytest.raises(SessionError, match="no pending"):
        s.mark_done()
    nxt = s.next_step(frame)
    assert nxt.index == 1
    s.replan()
    assert s.pending is None and len(s.history) == 1
    assert s.plan().steps == [step]


def test_session_rejects_unknown_instruction(backend):
    with pytest.raises(BackendError, match="flamingo"):
        GuidanceSession(backend, "feed the flamingo")
    with pytest.raises(SessionError, match="empty"):
        GuidanceSession(backend, "")


def test_replan_after_a_rejection_gets_a_different_answer(backend, frame):
    opts = DecodeOptions(seed=1, dida_steps=2, max_text_tokens=6)
    s = GuidanceSession(backend, "clear the table", opts)
    seen = []
    for _ in range(3):
        step = s.next_step(frame)
        key = (step.is_final, step.text)
        assert key not in seen  # greedy text would repeat itself without the rejection list
        seen.append(key)
        s.replan()
    assert len(s.rejected) == 3
    s.replan(reject=False)  # nothing pending: nothing added
    again = GuidanceSession(backend, "clear the table", opts).next_step(frame)
    assert (again.is_final, again.text) == seen[0]  # a fresh session starts from the model's first choice
    step = s.next_step(frame)
    if not step.is_final:
        s.mark_done(step)
        assert s.rejected == []


def test_avoid_options_are_validated():
    with pytest.raises(ValueError, match="avoid_texts"):
        DecodeOptions(avoid_texts=("",))


def test_grounded_names_are_validated(backend, frame):
    with pytest.raises(ValueError, match="allowed_names without known_names"):
        DecodeOptions(allowed_names=("red cup",))
    with pytest.raises(ValueError, match="known_names must be non-empty"):
        DecodeOptions(known_names=("",))
    session = GuidanceSession(backend, "pick up the red cup")
    with pytest.raises(SessionError, match="known_names"):
        session.next_step(frame, allowed_names=["red cup"])
