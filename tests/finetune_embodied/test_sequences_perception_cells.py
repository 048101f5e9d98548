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
