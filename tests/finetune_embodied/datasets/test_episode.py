"""Episode: what every reader returns and every writer takes. Each validation names what is wrong;
subtask_segments cuts runs of equal labels at exact frame boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_embodied.datasets import Episode
from finetune_embodied.datasets.episode import IMAGE_KEY_PREFIX

CAM = "observation.images.front"


def _ep(n: int = 4, **kw) -> Episode:
    args = dict(
        task="clear the table",
        images={CAM: np.zeros((n, 6, 8, 3), np.uint8)},
        state=np.arange(n * 2, dtype=np.float64).reshape(n, 2),
        action=np.ones((n, 3), np.int64),
    )
    args.update(kw)
    return Episode(**args)


def test_a_valid_episode_keeps_its_values_as_float32():
    ep = _ep(4, timestamp=[0, 0.1, 0.2, 0.3])
    assert IMAGE_KEY_PREFIX == "observation.images."
    assert ep.length == 4 and ep.camera_keys == [CAM] and ep.episode_index == -1
    assert ep.state.dtype == np.float32 and ep.action.dtype == np.float32 and ep.timestamp.dtype == np.float32
    np.testing.assert_array_equal(ep.state, np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(ep.action, np.ones((4, 3)))
    np.testing.assert_allclose(ep.timestamp, [0, 0.1, 0.2, 0.3], atol=1e-7)
    assert ep.extra == {} and ep.subtasks is None and ep.subtask_segments() == []
    # LeRobot's single camera key "observation.image" is accepted as well
    assert _ep(2, images={"observation.image": np.zeros((2, 4, 4, 3), np.uint8)}).camera_keys == ["observation.image"]
    assert _ep(3, images={}).camera_keys == []


@pytest.mark.parametrize("task", ["", "   ", None, 3])
def test_task_must_be_a_non_empty_string(task):
    with pytest.raises(ValueError, match=r"Episode\.task must be a non-empty string, got " + repr(repr(task))[1:-1]):
        _ep(task=task)


def test_state_and_action_must_be_two_dimensional_and_of_equal_length():
    with pytest.raises(ValueError, match=r"state/action must be \(T, D\), got \(4,\) and \(4, 3\)"):
        _ep(state=np.zeros(4))
    with pytest.raises(ValueError, match=r"state/action must be \(T, D\), got \(4, 2\) and \(4, 3, 1\)"):
        _ep(action=np.zeros((4, 3, 1)))
    with pytest.raises(ValueError, match="Episode has no frames"):
        _ep(0)
    with pytest.raises(ValueError, match="Episode: 4 states but 5 actions"):
        _ep(action=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="Episode: 4 states but 3 actions"):
        _ep(action=np.zeros((3, 3)))
    assert _ep(1).length == 1  # one frame is an episode


@pytest.mark.parametrize(
    "frames, got",
    [
        (np.zeros((4, 6, 8, 3), np.float32), "float32"),  # dtype
        (np.zeros((4, 6, 8), np.uint8), "(4, 6, 8)"),  # ndim
        (np.zeros((4, 6, 8, 4), np.uint8), "(4, 6, 8, 4)"),  # channels
        (np.zeros((4, 1, 6, 8, 3), np.uint8), "(4, 1, 6, 8, 3)"),  # 5-D
        ([[0]], "list"),  # not an array
    ],
)
def test_image_frames_must_be_t_h_w_3_uint8(frames, got):
    with pytest.raises(ValueError, match=r"Episode\.images\['observation\.images\.front'\] must be \(T, H, W, 3\) uint8") as exc:
        _ep(images={CAM: frames})
    assert got in str(exc.value)


def test_image_keys_and_frame_counts_are_checked():
    with pytest.raises(ValueError, match=r"Episode\.images key 'front' must start with 'observation\.images\.'"):
        _ep(images={"front": np.zeros((4, 6, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"Episode\.images\['observation\.images\.front'\] has 5 frames but state has 4"):
        _ep(images={CAM: np.zeros((5, 6, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="has 3 frames but state has 4"):
        _ep(images={CAM: np.zeros((3, 6, 8, 3), np.uint8)})


def test_subtasks_one_non_empty_string_per_frame():
    with pytest.raises(ValueError, match="Episode.subtasks has 3 entries for 4 frames"):
        _ep(subtasks=["a", "a", "b"])
    with pytest.raises(ValueError, match="Episode.subtasks has 5 entries for 4 frames"):
        _ep(subtasks=["a"] * 5)
    with pytest.raises(ValueError, match="Episode.subtasks entries must be non-empty strings, got ''"):
        _ep(subtasks=["a", "", "b", "b"])
    with pytest.raises(ValueError, match="Episode.subtasks entries must be non-empty strings, got 7"):
        _ep(subtasks=["a", "a", 7, "b"])
    assert _ep(subtasks=["a", "a", "b", "b"]).subtasks == ["a", "a", "b", "b"]


def test_timestamp_one_per_frame():
    with pytest.raises(ValueError, match=r"Episode\.timestamp must be \(4,\), got \(3,\)"):
        _ep(timestamp=[0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match=r"Episode\.timestamp must be \(4,\), got \(4, 1\)"):
        _ep(timestamp=np.zeros((4, 1)))


@pytest.mark.parametrize(
    "labels, segments",
    [
        (["a"], [("a", 0, 0)]),
        (["a", "a", "a"], [("a", 0, 2)]),
        (["a", "b"], [("a", 0, 0), ("b", 1, 1)]),
        (["a", "a", "b", "b", "b", "c"], [("a", 0, 1), ("b", 2, 4), ("c", 5, 5)]),
        (["a", "b", "a", "a"], [("a", 0, 0), ("b", 1, 1), ("a", 2, 3)]),  # a label that comes back is a new run
    ],
)
def test_subtask_segments_are_first_and_last_frame_of_each_run(labels, segments):
    assert _ep(len(labels), subtasks=labels).subtask_segments() == segments
