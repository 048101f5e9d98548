"""The per-token targets of the perception probe (perception_aux): each listed object's class on the
token its centre lies in, none elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_embodied.sequences import frame_cell_targets, perception_object_classes

TEXT = "see red cup left back , big blue block right front holding nothing ."


def test_classes_are_the_sorted_object_names_of_the_texts():
    assert perception_object_classes([TEXT, "see nothing holding red cup ."]) == ["big blue block", "red cup"]


def test_each_object_marks_the_token_of_its_centre():
    classes = perception_object_classes([TEXT])
    cells = frame_cell_targets(TEXT, [[10.0, 5.0], [95.0, 95.0]], classes, (12, 12), (96, 96))
    assert cells.shape == (144,) and np.count_nonzero(cells) == 2
    assert cells[0 * 12 + 1] == 1 + classes.index("red cup")  # u 10 -> column 1, v 5 -> row 0
    assert cells[11 * 12 + 11] == 1 + classes.index("big blue block")  # the far corner clamps into the grid


def test_mismatched_pixels_or_unknown_names_are_errors():
    with pytest.raises(ValueError, match="lists 2 objects but has 1 pixels"):
        frame_cell_targets(TEXT, [[1.0, 1.0]], ["big blue block", "red cup"], (12, 12), (96, 96))
    with pytest.raises(ValueError, match="not among"):
        frame_cell_targets(TEXT, [[1.0, 1.0], [2.0, 2.0]], ["red cup"], (12, 12), (96, 96))


def test_the_held_object_marks_its_token_too():
    """Recordings store the held object's pixel after the listed ones: its token is named, not empty."""
    text = "see red cup left back holding big blue block ."
    classes = ["big blue block", "red cup"]
    cells = frame_cell_targets(text, [[10.0, 5.0], [50.0, 60.0]], classes, (12, 12), (96, 96))
    assert cells[0 * 12 + 1] == 2 and cells[7 * 12 + 6] == 1 and np.count_nonzero(cells) == 2
    # a listed object keeps its token; a recording without the held pixel leaves it empty
    assert np.count_nonzero(frame_cell_targets(text, [[10.0, 5.0], [12.0, 6.0]], classes, (12, 12), (96, 96))) == 1
    assert np.count_nonzero(frame_cell_targets(text, [[10.0, 5.0]], classes, (12, 12), (96, 96))) == 1
    with pytest.raises(ValueError, match="lists 1 objects but has 2 pixels"):  # nothing held: no extra pixel
        frame_cell_targets("see red cup left back holding nothing .", [[1.0, 1.0], [2.0, 2.0]], classes, (12, 12),
                           (96, 96))


def test_a_recorded_frame_gives_the_held_object_a_pixel():
    from finetune_embodied.record import frame_perception
    from planner.envs import make_env
    from sim_envs.expert import ScriptedExpert

    env = make_env("table_clear", resolution=96)
    env.reset(seed=5)
    expert = ScriptedExpert(env, mistake_rate=0.0, seed=5)
    held = None
    for _ in range(200):
        action, _, _ = expert.next_action()
        env.step(action)
        text, pixels = frame_perception(env.unwrapped, 96, 96)
        held = env.unwrapped.privileged_state().get("held")
        if held:
            break
    env.close()
    assert held and f"holding {held} ." in text
    listed = text.count(",") + 1 if not text.startswith("see nothing") else 0
    assert len(pixels) == listed + 1 and all(0 <= c <= 96 for c in pixels[-1])
