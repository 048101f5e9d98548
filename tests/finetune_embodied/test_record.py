"""`emu-guide record`: expert episodes with subtask labels; held-out seeds refused; kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from argparse import ArgumentParser
from pathlib import Path

import numpy as np
import pytest

from finetune_embodied import record as rec
from finetune_embodied.datasets import open_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_refuses_heldout_seeds_and_bad_options(tmp_path):
    with pytest.raises(ValueError, match="not in the train split"):
        rec.RecordConfig(out=str(tmp_path / "d"), seeds=(1_000_005,))
    with pytest.raises(ValueError, match="unknown task"):
        rec.RecordConfig(out=str(tmp_path / "d"), tasks=("juggle",))
    with pytest.raises(ValueError, match="mistake_rate"):
        rec.RecordConfig(out=str(tmp_path / "d"), mistake_rate=1.5)
    with pytest.raises(ValueError, match="pix_fmt"):
        rec.RecordConfig(out=str(tmp_path / "d"), pix_fmt="yuv411p")
    with pytest.raises(ValueError, match="crf"):
        rec.RecordConfig(out=str(tmp_path / "d"), crf=-1)
    parser = ArgumentParser()
    rec.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--seeds", "1000001", "--no-progress"])
    assert rec.main(args) == 2
    assert not (tmp_path / "d").exists()


def test_record_two_workers_writes_labelled_dataset(tmp_path):
    cfg = rec.RecordConfig(out=str(tmp_path / "ds"), episodes_per_task=3, seed_offset=40, mistake_rate=0.5, workers=2)
    summary = rec.record(cfg, progress=False)
    assert summary["episodes_recorded_now"] == 3 and summary["episodes_in_dataset"] == 3
    reader = open_dataset(cfg.out)
    manifest = json.loads((Path(cfg.out) / "meta" / "emu_recording.json").read_text())
    assert [e["seed"] for e in manifest["episodes"]] == [40, 41, 42]
    assert summary["mistakes_injected"] > 0  # off-nominal states are in the data
    labels = set()
    for ep in reader.iter_episodes():
        assert ep.images[rec.CAMERA].shape == (ep.length, 64, 64, 3)
        segs = ep.subtask_segments()
        labels |= {t for t, _, _ in segs}
        # The gripper state (column 3) changes inside subtasks, never on frame 0.
        assert ep.state[0, 3] == 0.0
    assert any(t.startswith("put the") and t.endswith("back") for t in labels) or any("again" in t for t in labels)
    assert reader.subtasks is not None and len(reader.subtasks) == len(labels)
    # Each frame says what its step was: a plan step, a failed attempt, a mistake or a recovery.
    kinds = rec.load_step_kinds(cfg.out)
    for ep in reader.iter_episodes(load_images=False):
        per_frame = kinds[ep.episode_index]
        assert len(per_frame) == ep.length and per_frame[-1] == "plan"  # the last step reached its goal
        for text, _, last in ep.subtask_segments():
            if text.endswith(" back") or text.endswith(" again"):
                assert per_frame[last] == "recovery", text
    assert {k for v in kinds.values() for k in v} >= {"plan", "mistake", "recovery"}
    # A re-run with nothing new to record (a resumed pipeline) keeps the dataset as it is...
    stamp = (Path(cfg.out) / "meta" / "emu_recording.json").stat().st_mtime_ns
    again = rec.record(rec.RecordConfig(out=cfg.out, episodes_per_task=3, seed_offset=40, mistake_rate=0.5, workers=1),
                       progress=False)
    assert again["episodes_recorded_now"] == 0 and again["episodes_in_dataset"] == 3
    assert (Path(cfg.out) / "meta" / "emu_recording.json").stat().st_mtime_ns == stamp
    # ...but a different selection of the same shards is consolidated afresh.
    fewer = rec.record(rec.RecordConfig(out=cfg.out, episodes_per_task=2, seed_offset=40, mistake_rate=0.5), progress=False)
    assert fewer["episodes_in_dataset"] == 2 and open_dataset(cfg.out).num_episodes == 2
    # <out> may be a link to a dataset elsewhere: consolidation replaces the link, the target stays.
    linked = tmp_path / "linked"
    linked.symlink_to(Path(cfg.out).resolve())
    Path(f"{linked}.shards").symlink_to(cfg.shard_dir.resolve())  # the recorded episodes are reused
    rec.record(rec.RecordConfig(out=str(linked), episodes_per_task=3, seed_offset=40, mistake_rate=0.5,
                                workers=1), progress=False)
    assert not linked.is_symlink() and open_dataset(linked).num_episodes == 3
    assert open_dataset(cfg.out).num_episodes == 2


def test_more_episodes_of_one_task(tmp_path):
    out = tmp_path / "ds"
    cfg = rec.RecordConfig(out=str(out), tasks=("table_clear", "sort_blocks"), episodes_per_task=1,
                           episodes_by_task={"sort_blocks": 2}, seed_offset=40, resolution=32)
    assert cfg.jobs() == [("table_clear", 40), ("sort_blocks", 40), ("sort_blocks", 41)]
    assert rec.record(cfg, progress=False)["episodes_in_dataset"] == 3
    manifest_path = out / "meta" / "emu_recording.json"
    manifest = json.loads(manifest_path.read_text())
    assert [(e["task"], e["seed"]) for e in manifest["episodes"]] == cfg.jobs()
    # A dataset recorded before episodes_by_task existed reads as recorded without it: still up to date.
    plain = rec.RecordConfig(out=str(out), tasks=("table_clear", "sort_blocks"), episodes_per_task=1, seed_offset=40,
                             resolution=32)
    del manifest["config"]["episodes_by_task"]
    manifest["episodes"] = manifest["episodes"][:2]
    manifest_path.write_text(json.dumps(manifest))
    assert rec._up_to_date_manifest(plain) is not None and rec._up_to_date_manifest(cfg) is None
    with pytest.raises(ValueError, match="not among the recorded tasks"):
        rec.RecordConfig(out=str(out), tasks=("table_clear",), episodes_by_task={"sort_blocks": 2})
    with pytest.raises(ValueError, match="whole episode counts"):
        rec.RecordConfig(out=str(out), episodes_by_task={"table_clear": "many"})
    with pytest.raises(ValueError, match="explicit seeds"):
        rec.RecordConfig(out=str(out), seeds=(40,), episodes_by_task={"table_clear": 2})
    parser = ArgumentParser()
    rec.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--episodes-by-task", "table_clear:3", "--no-progress"])
    assert rec.main(args) == 2 and not (tmp_path / "d").exists()


def test_killed_recording_resumes_without_duplicates_or_losses(tmp_path):
    out = tmp_path / "ds"
    shards = Path(str(out) + ".shards")
    cmd = [sys.executable, "-m", "emu_guide.cli", "record", "--out", str(out), "--episodes", "5", "--seed-offset", "7",
           "--mistake-rate", "0.3", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(shards.glob("*.npz"))) < 2:
        if proc.poll() is not None:
            pytest.fail(f"recorder exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-recording: no chance to clean up
    proc.wait()
    proc.stderr.close()
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.npz")}
    assert 2 <= len(before) < 5, before
    assert not (out / "meta" / "info.json").exists()

    cfg = rec.RecordConfig(out=str(out), episodes_per_task=5, seed_offset=7, mistake_rate=0.3)
    summary = rec.record(cfg, progress=False)
    assert summary["episodes_resumed"] == len(before)
    assert summary["episodes_recorded_now"] == 5 - len(before)
    # Shards written before the kill were reused, not re-recorded.
    assert {n: (shards / n).stat().st_mtime_ns for n in before} == before
    manifest = json.loads((out / "meta" / "emu_recording.json").read_text())
    assert [e["seed"] for e in manifest["episodes"]] == [7, 8, 9, 10, 11]
    reader = open_dataset(out)
    assert reader.episode_indices == [0, 1, 2, 3, 4]
    # Same episodes as a recording that was never interrupted (the expert is seeded per episode).
    ref = rec.RecordConfig(out=str(tmp_path / "ref"), seeds=(9,), mistake_rate=0.3)
    rec.record(ref, progress=False)
    np.testing.assert_array_equal(open_dataset(ref.out).episode(0, load_images=False).state,
                                  reader.episode(2, load_images=False).state)
    # A re-run with nothing missing records nothing and rebuilds the same dataset.
    again = rec.record(cfg, progress=False)
    assert again["episodes_recorded_now"] == 0 and open_dataset(out).num_frames == reader.num_frames
    # Resuming with other settings would mix episodes of two recipes: refused, dataset left intact.
    other = rec.RecordConfig(out=str(out), episodes_per_task=5, seed_offset=7, mistake_rate=0.0)
    with pytest.raises(ValueError, match="was recorded with"):
        rec.record(other, progress=False)
    assert open_dataset(out).num_frames == reader.num_frames


@pytest.mark.parametrize("task", ["fold_cloth", "sort_blocks"])
def test_the_last_frame_is_the_one_the_loop_sees_after_the_last_step(tmp_path, task):
    """The env signals success mid-way through the last step; the recording goes on to the step's
    end, where the loop's executor (``execute_skill``) stops and the loop verifies the step."""
    from planner.envs import make_env

    cfg = rec.RecordConfig(out=str(tmp_path / "ds"), tasks=(task,), seeds=(40,), mistake_rate=0.0, resolution=32)
    rec.record_episode(task, 40, cfg)
    shard = np.load(rec.shard_path(cfg.shard_dir, task, 40))
    env = make_env(task, resolution=32)
    env.reset(seed=40)
    sim = env.unwrapped
    for step in sim.ground_truth_plan():
        assert sim.execute_skill(step.goal).success
    assert np.array_equal(shard["images"][-1], sim.render())
    env.close()
