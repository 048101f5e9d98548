"""GuidanceSession over the real torch backend with a tiny random model."""

from __future__ import annotations

import pytest

from emu_guide.types import PlanStatus, PlanStep
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
    # avoid_final: the random model may not answer "task complete" here, so every path below runs
    opts = DecodeOptions(seed=1, dida_steps=2, max_text_tokens=6, avoid_final=True)
    s = GuidanceSession(backend, "clear the table", opts)
    step = s.next_step(frame)
    assert step.index == 0 and s.pending is step and not step.is_final and not s.finished
    assert step.subgoal_image is not None and step.text
    with pytest.raises(SessionError, match="not the pending step"):
        s.mark_done(PlanStep(index=0, text="some other step"))
    s.mark_done(step)
    assert s.history == [step] and s.pending is None
    with pytest.raises(SessionError, match="no pending"):
        s.mark_done()
    nxt = s.next_step(frame)
    assert nxt.index == 1 and s.pending is nxt
    assert s.plan().steps == [step, nxt] and s.plan().status == PlanStatus.RUNNING
    # same seed, same frame, empty history: the same first step (the session adds no randomness)
    assert GuidanceSession(backend, "clear the table", opts).next_step(frame).text == step.text
    s.replan()
    assert s.pending is None and s.history == [step] and s.rejected == [nxt]
    assert s.plan().steps == [step]
    again = s.next_step(frame)
    assert again.index == 1 and again.text != nxt.text  # the rejected answer is not proposed again
    s.mark_done(again)
    assert s.history == [step, again] and s.rejected == []  # a done step clears the rejections
    # a final answer is not an action: it cannot be marked done, and it ends the session
    s.pending, s.finished = PlanStep(index=2, text="", is_final=True), True
    with pytest.raises(SessionError, match="final step"):
        s.mark_done()
    with pytest.raises(SessionError, match="already complete"):
        s.next_step(frame)
    assert s.plan().status == PlanStatus.SUCCEEDED
    s.replan()  # a premature "done" rejected: the session goes on
    assert not s.finished and s.next_step(frame).index == 2


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
