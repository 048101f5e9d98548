"""Step checks (frame verification) as training data: which frames say a step happened, which do not."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_embodied.datasets import Episode
from finetune_embodied.sequences import SequenceDataset, check_samples, dataset_texts
from model_runtime.layout import COMPACT_NUM_SPECIALS, compact
from model_runtime.prompt import (
    CHECK_ANSWERS,
    CHECK_REQUEST,
    build_check_prompt,
    build_check_sequence,
    check_answer_ids,
    check_texts,
)
from model_runtime.text_tokenizer import WordTokenizer
from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

CAM = "observation.images.front"
CUP, PLACE, BLOCK = "pick up the red cup", "place the red cup in the bin", "pick up the blue block"


def recorded_episode() -> tuple[Episode, list[str]]:
    """The recorder's episode: a wrong pick and its recovery, a slipped place picked up again."""
    segs = [(CUP, "plan", 4), (BLOCK, "mistake", 3), ("put the blue block back", "recovery", 3),
            (PLACE, "failed", 2), ("pick up the red cup again", "recovery", 3), (PLACE, "plan", 4), (BLOCK, "plan", 4)]
    labels = [t for t, _, n in segs for _ in range(n)]
    kinds = [k for _, k, n in segs for _ in range(n)]
    n = len(labels)  # the segments end at frames 3, 6, 9, 11, 14, 18, 22
    frames = np.random.default_rng(0).integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
    ep = Episode(task="clear the table", images={CAM: frames}, state=np.zeros((n, 3)), action=np.zeros((n, 4)),
                 subtasks=labels, episode_index=7)
    return ep, kinds


def test_check_samples_ask_what_the_loop_asks_after_each_step():
    ep, kinds = recorded_episode()
    asked = [(c.frame_index, c.step_text, c.happened) for c in check_samples(ep, kinds)]
    back, again = "put the blue block back", "pick up the red cup again"
    assert asked == [
        (0, CUP, False), (3, CUP, True),  # a plan step: not yet at its start, done at its end
        (3, PLACE, False), (6, PLACE, False),  # the wrong pick displaced the place: it did not happen
        (6, back, False), (9, back, True),  # a recovery is a step like any other
        (9, PLACE, False), (11, PLACE, False),  # the slipped place did not happen (its start was asked at 3 and 9)
        (11, again, False), (14, again, True),
        (14, PLACE, False), (18, PLACE, True),
        (18, BLOCK, False), (22, BLOCK, True),
    ]
    assert {c.episode_index for c in check_samples(ep, kinds)} == {7}
    # without step kinds every segment is a plan step that happened (the mistake's text included)
    plain = check_samples(ep)
    assert [c.happened for c in plain if c.frame_index == 6] == [True, False]


def test_check_sequence_answers_yes_or_no_after_the_step_and_frame():
    ep, kinds = recorded_episode()
    tok = WordTokenizer.build(dataset_texts([ep]) + check_texts())
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4), channels=(8, 8, 8), out_channels=8))
    layout = compact(tok.vocab_size, vision.num_codes)
    codes = vision.encode(ep.images[CAM][:1])[0]
    yes, no = check_answer_ids(layout, tok)
    for happened, answer in ((True, yes), (False, no)):
        seq = build_check_sequence(layout, tok, CUP, codes, happened)
        assert seq.kind == "check" and list(seq.input_ids[seq.prompt_length:]) == [answer, layout.eos]
        assert list(seq.input_ids[: seq.prompt_length]) == build_check_prompt(layout, tok, CUP, codes)
        assert (seq.labels[: seq.prompt_length] == -100).all() and seq.loss_weights[seq.prompt_length] == 1.0
        weighed = build_check_sequence(layout, tok, CUP, codes, happened, answer_weight=20.0)
        assert list(weighed.loss_weights[weighed.prompt_length:]) == [20.0, 1.0]  # the answer word, then EOS
    with pytest.raises(ValueError, match="answer_weight must be > 0"):
        build_check_sequence(layout, tok, CUP, codes, True, answer_weight=0.0)
    # no instruction and no history in the prompt: the step and the frame only
    words = [i for i in build_check_prompt(layout, tok, CUP, codes) if COMPACT_NUM_SPECIALS <= i < layout.visual_offset]
    assert words == tok.encode(f"{CHECK_REQUEST} {CUP}")
    with pytest.raises(ValueError, match="does not know"):
        build_check_prompt(layout, tok, "juggle the red cup", codes)
    bare = WordTokenizer.build(dataset_texts([ep]))
    with pytest.raises(ValueError, match="lacks"):
        check_answer_ids(compact(bare.vocab_size, vision.num_codes), bare)
    assert CHECK_ANSWERS == ("yes", "no")

    ds = SequenceDataset([ep], layout, tok, vision, mid_samples_per_step=0, step_kinds={7: kinds}, check_sequences=True,
                         check_answer_weight=5.0)
    checks = [(s, q) for s, q in zip(ds.samples, ds.sequences) if q.kind == "check"]
    assert len(checks) == len(check_samples(ep, kinds))
    for s, q in checks:
        assert int(q.input_ids[q.prompt_length]) == (yes if s.happened else no) and q.loss_weights[q.prompt_length] == 5.0
