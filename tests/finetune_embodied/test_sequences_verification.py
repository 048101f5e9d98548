"""The step verifier's training samples: which frame pairs say a step happened, which do not."""

from __future__ import annotations

import numpy as np

from finetune_embodied.datasets import Episode
from finetune_embodied.sequences import verification_pairs

CAM = "observation.images.front"
CUP, PLACE, BLOCK = "pick up the red cup", "place the red cup in the bin", "pick up the blue block"
BACK, AGAIN = "put the blue block back", "pick up the red cup again"


def recorded_episode() -> tuple[Episode, list[str]]:
    """The recorder's episode: a wrong pick and its recovery, a slipped place picked up again."""
    segs = [(CUP, "plan", 4), (BLOCK, "mistake", 3), (BACK, "recovery", 3),
            (PLACE, "failed", 2), (AGAIN, "recovery", 3), (PLACE, "plan", 4), (BLOCK, "plan", 4)]
    labels = [t for t, _, n in segs for _ in range(n)]
    kinds = [k for _, k, n in segs for _ in range(n)]
    n = len(labels)  # the segments end at frames 3, 6, 9, 11, 14, 18, 22
    frames = np.random.default_rng(0).integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
    ep = Episode(task="clear the table", images={CAM: frames}, state=np.zeros((n, 3)), action=np.zeros((n, 4)),
                 subtasks=labels, episode_index=7)
    return ep, kinds


def test_pairs_ask_what_the_loop_asks_after_each_step():
    ep, kinds = recorded_episode()
    pairs = verification_pairs(ep, kinds, np.random.default_rng(0))
    steps = [(p.before_index, p.after_index, p.step_text, p.happened) for p in pairs if p.source == "step"]
    assert steps == [
        (0, 3, CUP, True),  # a plan step, from the frame it was planned on to its end
        (3, 6, PLACE, False),  # the wrong pick displaced the place: the place did not happen
        (6, 9, BACK, True),  # a recovery is a step like any other
        (9, 11, PLACE, False),  # the slipped place did not happen
        (11, 14, AGAIN, True),
        (14, 18, PLACE, True),
        (18, 22, BLOCK, True),
    ]
    # part way into each attempt (the first third, never its end frame): not yet
    partway = [(p.before_index, p.after_index, p.step_text, p.happened) for p in pairs if p.source == "partway"]
    assert partway == [(0, 1, CUP, False), (3, 4, PLACE, False), (6, 7, BACK, False), (9, 10, PLACE, False),
                       (11, 12, AGAIN, False), (14, 15, PLACE, False), (18, 19, BLOCK, False)]
    # each step that happened is also asked about other steps of the plan, which did not happen here:
    # one with the same verb where the plan has one (a near miss: another object picked), one any other
    others = [p for p in pairs if p.source == "other step"]
    assert [(p.before_index, p.after_index) for p in others] == [(0, 3), (0, 3), (6, 9), (11, 14), (11, 14),
                                                                 (14, 18), (18, 22), (18, 22)]
    for p in others:
        own = next(s.step_text for s in pairs if s.source == "step" and s.after_index == p.after_index)
        assert p.step_text != own and p.step_text in {CUP, PLACE, BACK, AGAIN, BLOCK} and not p.happened
    for end in (3, 14, 22):  # the picks: the plan has other picks
        asked = {p.step_text for p in others if p.after_index == end}
        assert len(asked) == 2 and any(t.startswith("pick") for t in asked)
    assert {p.episode_index for p in pairs} == {7}
    # the draws are seeded: the same generator gives the same samples
    assert verification_pairs(ep, kinds, np.random.default_rng(0)) == pairs


def test_without_step_kinds_every_labelled_step_happened():
    ep, _ = recorded_episode()
    steps = [p for p in verification_pairs(ep) if p.source == "step"]
    assert [(p.after_index, p.step_text, p.happened) for p in steps][1] == (6, BLOCK, True)  # the mistake's own text
    assert all(p.happened for p in steps)
