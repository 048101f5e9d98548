"""Episodes -> training sequences; decoding a sample's answer gives back the step and its keyframe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune_embodied.datasets import Episode
from finetune_embodied.sequences import SequenceDataset, collate_sequences, dataset_texts, plan_episode
from model_runtime.layout import compact
from model_runtime.prompt import IGNORE_INDEX, parse_answer
from model_runtime.text_tokenizer import WordTokenizer
from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

CAM = "observation.images.front"
STEPS = ["pick up the red cup", "place the red cup in the bin", "pick up the blue block"]


def make_episode(index: int = 0, lengths=(7, 6, 5)) -> Episode:
    rng = np.random.default_rng(index)
    n = sum(lengths)
    labels = [s for s, k in zip(STEPS, lengths) for _ in range(k)]
    frames = rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
    return Episode(task="clear the table", images={CAM: frames}, state=np.zeros((n, 3)), action=np.zeros((n, 4)),
                   subtasks=labels, episode_index=index)


def test_plan_covers_boundaries_mid_step_and_done():
    ep = make_episode()
    plan = plan_episode(ep, mid_samples_per_step=2, rng=np.random.default_rng(0))
    starts, ends = [0, 7, 13], [6, 12, 17]
    boundary = [s for s in plan if not s.mid_step and not s.is_final]
    # A step's boundary sample is the frame where the previous step is complete (its last frame).
    assert [(s.frame_index, s.step_text, s.keyframe_index) for s in boundary] == list(zip([0, 6, 12], STEPS, ends))
    mids = [s for s in plan if s.mid_step]
    assert len(mids) == 6
    for s in mids:
        i = STEPS.index(s.step_text)
        assert max(starts[i], 1) <= s.frame_index < ends[i] and s.keyframe_index == ends[i]
        assert s.history == tuple(STEPS[:i])
    final = plan[-1]
    assert final.is_final and final.frame_index == 17 and final.history == tuple(STEPS) and final.step_text is None
    assert plan_episode(ep, 0, max_history=1)[2].history == (STEPS[1],)


def test_unconfirmed_samples_repeat_each_boundary_without_the_step_just_done():
    ep = make_episode()
    plain = plan_episode(ep, 0)
    plan = plan_episode(ep, 0, unconfirmed=True)
    key = [(s.frame_index, s.history, s.step_text, s.is_final) for s in plan]
    assert [k for k in key if k in {(s.frame_index, s.history, s.step_text, s.is_final) for s in plain}] == \
        [(s.frame_index, s.history, s.step_text, s.is_final) for s in plain]
    # after each done step (frames 6, 12 and the final 17): the same frame and target, the step not yet in the history
    extra = [k for k in key if k not in {(s.frame_index, s.history, s.step_text, s.is_final) for s in plain}]
    assert extra == [(6, (), STEPS[1], False), (12, (STEPS[0],), STEPS[2], False), (17, tuple(STEPS[:2]), None, True)]


def test_recorded_mistakes_are_never_targets_nor_history():
    # The recorder's episode: step 0, a wrong pick and its recovery, step 1 slips once (failed) and
    # is picked up again, then done.
    segs = [("pick up the red cup", "plan", 4), ("pick up the blue block", "mistake", 3),
            ("put the blue block back", "recovery", 3), ("place the red cup in the bin", "failed", 2),
            ("pick up the red cup again", "recovery", 3), ("place the red cup in the bin", "plan", 4),
            ("pick up the blue block", "plan", 4)]
    labels = [t for t, _, n in segs for _ in range(n)]
    kinds = [k for _, k, n in segs for _ in range(n)]
    # the segments end at frames 3, 6, 9, 11, 14, 18, 22
    n = len(labels)
    ep = Episode(task="clear the table", images={CAM: np.zeros((n, 8, 8, 3), np.uint8)}, state=np.zeros((n, 3)),
                 action=np.zeros((n, 4)), subtasks=labels, episode_index=0)
    plan = plan_episode(ep, 1, kinds=kinds, unconfirmed=True)
    said = [(s.frame_index, s.history, s.step_text, s.keyframe_index, s.unconfirmed) for s in plan if not s.mid_step]
    cup, place, again = "pick up the red cup", "place the red cup in the bin", "pick up the red cup again"
    assert said == [
        (0, (), cup, 3, False),
        (3, (cup,), place, 18, False),  # where the wrong pick began: the step it displaced, its outcome
        (3, (), place, 18, True),
        (6, (cup,), "put the blue block back", 9, False),  # the mistake is not in the history
        (9, (cup, "put the blue block back"), place, 18, False),  # the slip: the outcome of the attempt that works
        (9, (cup,), place, 18, True),
        (11, (cup, "put the blue block back"), again, 14, False),  # the failed attempt is not confirmed
        (14, (cup, "put the blue block back", again), place, 18, False),
        (14, (cup, "put the blue block back"), place, 18, True),
        (18, (cup, "put the blue block back", again, place), "pick up the blue block", 22, False),
        (18, (cup, "put the blue block back", again), "pick up the blue block", 22, True),
        (22, (cup, "put the blue block back", again, place, "pick up the blue block"), None, None, False),
        (22, (cup, "put the blue block back", again, place), None, None, True),
    ]
    # no sample inside the mistake; the rest of the plan names each remaining step once
    assert not [s for s in plan if s.mid_step and 4 <= s.frame_index <= 6]
    assert [s.rest for s in plan if s.rest][:3] == [(cup, place, "pick up the blue block"),
                                                     (place, "pick up the blue block"),
                                                     ("put the blue block back", place, "pick up the blue block")]
    with pytest.raises(ValueError, match="unknown step kinds \\['oops'\\]"):
        plan_episode(ep, 0, kinds=kinds[:-1] + ["oops"])
    with pytest.raises(ValueError, match="step kinds for 3 frames"):
        plan_episode(ep, 0, kinds=kinds[:3])


def test_plan_from_keyframes_for_unlabeled_episode():
    ep = make_episode()
    ep.subtasks = None
    with pytest.raises(ValueError, match="no subtask labels"):
        plan_episode(ep)
    plan = plan_episode(ep, 0, keyframes=[4, 17], step_texts=["a", "b"])
    assert [(s.frame_index, s.keyframe_index, s.step_text) for s in plan[:2]] == [(0, 4, "a"), (4, 17, "b")]
    with pytest.raises(ValueError, match="strictly increasing"):
        plan_episode(ep, 0, keyframes=[9, 4], step_texts=["a", "b"])


@pytest.fixture(scope="module")
def built():
    episodes = [make_episode(0), make_episode(1, lengths=(4, 9, 3))]
    text_tok = WordTokenizer.build(dataset_texts(episodes))
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4), channels=(8, 8, 8), out_channels=8))
    layout = compact(text_tok.vocab_size, vision.num_codes)
    ds = SequenceDataset(episodes, layout, text_tok, vision, visual_loss_weight=0.25, mid_samples_per_step=2)
    return episodes, text_tok, vision, layout, ds


def test_decoding_sample_answer_returns_step_and_keyframe_codes(built):
    episodes, text_tok, vision, layout, ds = built
    # 3 boundaries + 2 mid-step samples per step + done, per episode.
    assert len(ds) == 2 * (3 + 6 + 1)
    seen_mid = seen_final = 0
    for sample, seq in zip(ds.samples, ds.sequences):
        ep = episodes[sample.episode_index]
        answer = seq.input_ids[seq.prompt_length:]
        parsed = parse_answer(layout, text_tok, answer, expected_grid=(4, 4))
        if sample.is_final:
            seen_final += 1
            assert parsed.is_final
            continue
        assert parsed.text == sample.step_text
        want = vision.encode(ep.images[CAM][sample.keyframe_index][None])[0]
        np.testing.assert_array_equal(parsed.codes, want)
        # The prompt holds the current frame's codes (the conditioning image).
        cond = [sp for sp in seq.image_spans if not sp.is_target]
        assert len(cond) == 1
        np.testing.assert_array_equal(layout.parse_image(seq.input_ids[cond[0].start:cond[0].end]),
                                      vision.encode(ep.images[CAM][sample.frame_index][None])[0])
        seen_mid += sample.mid_step
    assert seen_final == 2 and seen_mid == 12


def test_loss_weights_and_labels(built):
    _, _, _, layout, ds = built
    seq = ds[0]
    p = seq.prompt_length
    assert (seq.labels[:p] == IGNORE_INDEX).all() and (seq.labels[p:] == seq.input_ids[p:]).all()
    visual = np.asarray(layout.is_visual(seq.input_ids))
    assert np.allclose(seq.loss_weights[p:][visual[p:]], 0.25)
    assert np.allclose(seq.loss_weights[p:][~visual[p:]], 1.0)
    assert (seq.loss_weights[:p] == 0).all()


def test_collate_pads_with_ignore_index(built):
    _, _, _, layout, ds = built
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False,
                                         collate_fn=lambda b: collate_sequences(b, layout.pad))
    batch = next(iter(loader))
    lengths = [len(ds[i]) for i in range(4)]
    assert batch["input_ids"].shape == (4, max(lengths))
    for r, n in enumerate(lengths):
        assert batch["attention_mask"][r].sum() == n
        assert (batch["labels"][r, n:] == IGNORE_INDEX).all() and (batch["input_ids"][r, n:] == layout.pad).all()
        assert (batch["loss_weights"][r, n:] == 0).all()
    assert min(lengths) < max(lengths)  # the final sample is shorter: padding really happened


def test_plan_sequences_name_every_remaining_step_and_are_training_only():
    from model_runtime.prompt import PLAN_REQUEST, PLAN_SEPARATOR

    episodes = [make_episode(0)]
    text_tok = WordTokenizer.build(dataset_texts(episodes) + [PLAN_REQUEST, PLAN_SEPARATOR])
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4), channels=(8, 8, 8), out_channels=8))
    layout = compact(text_tok.vocab_size, vision.num_codes)
    plain = SequenceDataset(episodes, layout, text_tok, vision, mid_samples_per_step=1)
    ds = SequenceDataset(episodes, layout, text_tok, vision, mid_samples_per_step=1, plan_sequences=True)
    plans = [s for s in ds.sequences if s.kind == "plan"]
    assert len(ds) == len(plain) + 3 and len(plans) == 3  # one per step boundary, none for "done"
    for i, seq in enumerate(plans):
        answer = seq.input_ids[seq.prompt_length:]
        assert answer[-1] == layout.eos and not any(layout.is_visual(answer))
        assert text_tok.decode(answer[:-1]) == f"{PLAN_SEPARATOR} ".join(STEPS[i:])  # decode glues punctuation
        request = text_tok.encode(PLAN_REQUEST)
        assert list(seq.input_ids[2 : 2 + len(request)]) == request
        assert (seq.labels[: seq.prompt_length] == IGNORE_INDEX).all() and (seq.loss_weights[seq.prompt_length:] == 1).all()
        assert not any(sp.is_target for sp in seq.image_spans)
    # the frame and history are the boundary sample's
    bound = [s for s in ds.samples if not s.mid_step and not s.is_final]
    assert [s.history for s in bound[-3:]] == [(), (STEPS[0],), tuple(STEPS[:2])]
    # the verifier's samples (no step just done in the history) add no rest-of-plan answer of their own
    both = SequenceDataset(episodes, layout, text_tok, vision, mid_samples_per_step=1, plan_sequences=True,
                           unconfirmed_samples=True)
    assert [text_tok.decode(s.input_ids[s.prompt_length:-1]) for s in both.sequences if s.kind == "plan"] == \
        [text_tok.decode(s.input_ids[s.prompt_length:-1]) for s in plans]
