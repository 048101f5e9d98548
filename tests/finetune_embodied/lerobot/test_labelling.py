"""Labelling unlabelled episodes: state columns by name, keyframes from each cue, scored against known step ends."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lerobot_layout import ARM_NAMES, arm_episode, write_lerobot_v3

from finetune_embodied.datasets import open_dataset
from finetune_embodied.keyframes import keyframes_from_state, match_keyframes
from finetune_embodied.labelling import LabelError, Labeller, label_dataset, main, map_state_columns
from finetune_embodied.train.config import ConfigError, LabelConfig, load_config

CAM = "observation.images.front"


def test_state_columns_are_mapped_by_name_and_never_guessed():
    c = map_state_columns(ARM_NAMES, 6)
    assert (c.gripper, c.position, c.joints) == ([5], [], [0, 1, 2, 3, 4])
    c = map_state_columns(["ee_x", "ee_y", "ee_z", "gripper", "holding"], 5)
    assert (c.gripper, c.position, c.joints) == ([3], [0, 1, 2], [])
    c = map_state_columns(["eef_pos_x", "eef_pos_y", "eef_pos_z", "finger_l", "finger_r"], 5)
    assert (c.gripper, c.position) == ([3, 4], [0, 1, 2])
    c = map_state_columns([], 4)  # no names: no gripper, no xyz; every column moves with the arm
    assert (c.gripper, c.position, c.joints) == ([], [], [0, 1, 2, 3])
    c = map_state_columns([], 4, gripper="3", position=[0, 1, 2])  # overrides by index
    assert (c.gripper, c.position, c.joints) == ([3], [0, 1, 2], [])
    c = map_state_columns(ARM_NAMES, 6, gripper="none", joints=["elbow_flex.pos"])
    assert (c.gripper, c.joints) == ([], [2])
    with pytest.raises(LabelError, match="no state column 'claw'"):
        map_state_columns(ARM_NAMES, 6, gripper="claw")
    with pytest.raises(LabelError, match="column 9 out of range"):
        map_state_columns([], 4, gripper="9")
    with pytest.raises(ValueError, match="no names"):  # the old silent xyz+gripper reading of unnamed state
        keyframes_from_state(np.zeros((5, 5)))


@pytest.mark.parametrize("cues,expect", [(["gripper", "motion", "image"], "gripper"), (["motion"], "motion"),
                                         (["image"], "image")])
def test_each_cue_finds_the_step_ends(cues, expect):
    eps = [arm_episode(s, "stack the cups", steps=3 + s % 2, labelled=False) for s in range(6)]
    lab = Labeller(LabelConfig(cues=cues), ARM_NAMES, [e.state for e, _ in eps], CAM)
    tp = det = act = 0
    for ep, ends in eps:
        res = lab.label(ep, ep.images[CAM])
        assert res.cue == expect
        s = match_keyframes(res.keyframes, ends, tolerance=1)
        tp, det, act = tp + s.true_positives, det + s.detected, act + s.actual
        assert res.keyframes[-1] == ep.length - 1 and len(res.texts) == len(res.keyframes)
    assert (tp / det, tp / act) == (1.0, 1.0), (tp, det, act)


def test_step_texts_follow_the_template_and_cover_every_frame():
    ep, ends = arm_episode(0, "stack the cups", steps=3, labelled=False)
    cfg = load_config(None, ["data.source=synthetic", "label.step_text='{event} ({i}/{n}) for {task}'"]).label
    res = Labeller(cfg, ARM_NAMES, [ep.state], CAM).label(ep)
    assert res.texts == ["grasp (1/3) for stack the cups", "release (2/3) for stack the cups", "end (3/3) for stack the cups"]
    per_frame = res.per_frame(ep.length)
    assert len(per_frame) == ep.length and per_frame[ends[0]] == res.texts[0] and per_frame[ends[0] + 1] == res.texts[1]
    with pytest.raises(ConfigError, match="must contain"):
        LabelConfig(step_text="{task}")  # every step would read the same and merge into one


def test_no_cue_at_all_gives_one_step(tmp_path):
    ep, _ = arm_episode(0, "wait", steps=2, labelled=False)
    ep.state[:] = ep.state[0]  # nothing moves
    res = Labeller(LabelConfig(cues=["gripper", "motion"]), ARM_NAMES, [ep.state], None).label(ep)
    assert (res.cue, res.keyframes, res.texts) == ("none", [ep.length - 1], ["wait: step 1 of 1"])


def test_on_recorded_sim_episodes_with_mistakes(tmp_path):
    """emu-guide record's expert (mistakes and recoveries included): labels hidden, then scored."""
    from finetune_embodied.record import RecordConfig, record

    out = tmp_path / "sim"
    record(RecordConfig(out=str(out), tasks=("table_clear",), episodes_per_task=2, mistake_rate=0.3, resolution=32,
                        keep_shards=False), progress=False)
    rep = label_dataset(open_dataset(out), LabelConfig(), CAM, only_missing=False, tolerance=2)
    print(rep.summary())
    assert rep.scored == 2 and rep.cues["gripper"] == 2
    assert rep.precision >= 0.9 and rep.recall >= 0.9, rep.summary()


def test_labelling_command_scores_a_labelled_dataset(tmp_path, capsys):
    ds = write_lerobot_v3(tmp_path / "ds", [arm_episode(s, "stack the cups")[0] for s in range(3)])
    assert main([str(ds), "--tolerance", "1", "--json", str(tmp_path / "l.json"), "label.cues=[motion]"]) == 0
    out = capsys.readouterr().out
    assert "3 episode(s) labelled (motion 3)" in out and "precision 1.00 recall 1.00 over 9 step ends" in out
    rep = json.loads((tmp_path / "l.json").read_text())
    assert rep["precision"] == 1.0 and len(rep["episodes"]) == 3
    assert main([str(ds), "label.cues=[smell]"]) == 2
    assert "label.cues must be" in capsys.readouterr().out
    assert main([str(ds), "cues=[image]", "--camera", "front"]) == 0  # the label. prefix is optional
    assert "3 episode(s) labelled (image 3)" in capsys.readouterr().out
    assert main([str(ds), "colour=red"]) == 2
    assert "unknown key(s) ['colour'] in label" in capsys.readouterr().out


def test_a_scalar_state_feature_is_one_column(tmp_path):
    """LeRobot stores a feature of shape [1] as a plain number per frame, not a list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ep = arm_episode(0, "stack the cups")[0]
    ds = write_lerobot_v3(tmp_path / "ds", [ep])
    for path in (ds / "data").rglob("*.parquet"):
        t = pq.read_table(path)
        i = t.column_names.index("observation.state")
        first = pa.array([row[0] for row in t.column(i).to_pylist()], pa.float32())
        pq.write_table(t.set_column(i, "observation.state", first), path)
    got = next(open_dataset(ds).iter_episodes(load_images=False))
    assert got.state.shape == (ep.length, 1)
    np.testing.assert_allclose(got.state[:, 0], ep.state[:, 0])
