"""Datasets laid out as LeRobot writes them (pandas-index metadata, v2.1, AV1, several cameras, with and
without step labels) are read, and each trains one step of every stage."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lerobot_layout import (
    ARM_NAMES,
    arm_episode,
    write_lerobot_v3,
    write_lerobot_v3_images,
    write_lerobot_v21,
    write_pandas_indexed,
)

from emu_guide.cli import main as cli
from finetune_embodied.datasets import DatasetError, open_dataset
from finetune_embodied.train.checkpoint import latest_checkpoint
from finetune_embodied.train.config import load_config
from finetune_embodied.train.loop import train

TINY = "model={hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, head_dim: 16, intermediate_size: 64}"
TASKS = ["stack the cups", "open the drawer"]


def _episodes(labelled=True, size=(32, 32), cameras=("front",), n=4):
    return [arm_episode(s, TASKS[s % 2], size=size, cameras=cameras, labelled=labelled)[0] for s in range(n)]


FIXTURES = {
    # name: (builder, episodes kwargs, extra train overrides)
    "v3 labelled, unnamed pandas index": (lambda r, e: write_lerobot_v3(r, e), {}, []),
    "v3 unlabelled": (lambda r, e: write_lerobot_v3(r, e), {"labelled": False}, []),
    "v3 AV1, named subtask index": (lambda r, e: write_lerobot_v3(r, e, codec="libsvtav1", subtask_index_name="subtask"),
                                    {}, []),
    "v3 two cameras, 32x48 frames, unlabelled": (lambda r, e: write_lerobot_v3(r, e),
                                                 {"labelled": False, "size": (32, 48), "cameras": ("front", "wrist")},
                                                 ["data.camera=wrist"]),
    "v3 PNG frames in parquet (use_videos=False), key observation.image": (
        lambda r, e: write_lerobot_v3_images(r, e), {"labelled": False}, []),
    "v2.1 unlabelled": (lambda r, e: write_lerobot_v21(r, e), {"labelled": False}, []),
    "v2.1 two cameras": (lambda r, e: write_lerobot_v21(r, e), {"labelled": False, "cameras": ("front", "top")},
                         ["data.camera=observation.images.top"]),
}


def _train_every_stage(tmp_path, ds, *extra):
    common = [f"data.path={ds}", "data.heldout_fraction=0.25", "optim.max_steps=1", "optim.batch_size=2",
              "eval.max_samples=2", *extra]
    tok = train(load_config(None, ["stage=tokenizer", "data.image_size=32", "model={channels: [16, 32], levels: [5, 5]}",
                                   f"checkpoint.dir={tmp_path / 'tok'}", *common]), progress=False)
    tok_ckpt = latest_checkpoint(tmp_path / "tok" / "checkpoints")
    nt = train(load_config(None, ["stage=next_token", f"tokenizer={tok_ckpt}", TINY, f"checkpoint.dir={tmp_path / 'nt'}",
                                  *common]), progress=False)
    dida = train(load_config(None, ["stage=dida", f"tokenizer={tok_ckpt}", TINY, f"init_from={nt.checkpoint}",
                                    f"checkpoint.dir={tmp_path / 'dida'}", *common]), progress=False)
    verifier = train(load_config(None, ["stage=verifier", "data.image_size=32", "model={width: 8, text_dim: 8}",
                                        f"checkpoint.dir={tmp_path / 'verifier'}", *common]), progress=False)
    assert verifier.steps == 1
    return tok, nt, dida


@pytest.mark.parametrize("name", list(FIXTURES))
def test_lerobot_layout_reads_and_trains_every_stage(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    build, kw, extra = FIXTURES[name]
    eps = _episodes(**kw)
    ds = build(tmp_path / "ds", eps)
    reader = open_dataset(ds)
    got = list(reader.iter_episodes())
    assert [e.task for e in got] == [e.task for e in eps]
    for g, e in zip(got, eps):
        assert g.subtasks == e.subtasks
        np.testing.assert_allclose(g.state, e.state, atol=1e-6)
        want = e.images if "observation.image" not in reader.camera_keys else {"observation.image": e.images[
            "observation.images.front"]}
        assert sorted(g.images) == sorted(want)
        for key, frames in want.items():
            assert g.images[key].shape == frames.shape
            assert np.abs(g.images[key].astype(int) - frames).mean() < 6  # lossy video (PNG: exact)
    assert reader.state_names() == ARM_NAMES
    tok, nt, dida = _train_every_stage(tmp_path, ds, *extra)
    assert tok.steps == nt.steps == dida.steps == 1
    out = capsys.readouterr().out
    summary = json.loads((nt.run_dir / "summary.json").read_text())
    if kw.get("labelled", True):
        assert "[label]" not in out
    else:  # labelled from the data: every episode, each with the steps the arm made (3 per episode)
        assert "[label] 4 episode(s) labelled (gripper 4); 3.0 steps/episode" in out
        assert "[label]" in summary["data_report"]
    if kw.get("size", (32, 32)) != (32, 32):
        assert "frames are 32x48 (HxW), not square: each is stretched to 32x32" in out


def test_task_text_as_a_plain_column_and_a_named_index(tmp_path):
    ds = write_lerobot_v3(tmp_path / "ds", _episodes(n=2))
    write_pandas_indexed(ds / "meta/tasks.parquet", TASKS, "task_index", index_name="task")
    assert open_dataset(ds).tasks == TASKS
    pq.write_table(pa.table({"task_index": [1, 0], "task": TASKS[::-1]}), ds / "meta/tasks.parquet")  # reset_index()
    assert open_dataset(ds).tasks == TASKS


def _cli_train(tmp_path, ds, *extra):
    return cli(["train", "--stage", "tokenizer", "--no-progress", f"data.path={ds}", "data.image_size=32",
                "model={channels: [16, 32], levels: [5, 5]}", "optim.max_steps=1", "optim.batch_size=2",
                f"checkpoint.dir={tmp_path / 'run'}", *extra])


def _one_line(capsys) -> str:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "Traceback" not in out[0], out
    return out[0]


def test_bad_datasets_are_one_line_errors(tmp_path, capsys):
    # several cameras and no data.camera: never a silent first pick
    ds = write_lerobot_v3(tmp_path / "two", _episodes(n=2, cameras=("front", "wrist")))
    assert _cli_train(tmp_path, ds) == 2
    assert "has 2 cameras ['front', 'wrist']: choose one with data.camera=<name>" in _one_line(capsys)
    assert _cli_train(tmp_path, ds, "data.camera=left") == 2
    assert "no camera 'left'" in _one_line(capsys)

    # no observation.state
    ds = write_lerobot_v3(tmp_path / "nostate", _episodes(n=2))
    info = json.loads((ds / "meta/info.json").read_text())
    info["features"].pop("observation.state")
    (ds / "meta/info.json").write_text(json.dumps(info))
    assert _cli_train(tmp_path, ds) == 2
    assert "no 'observation.state' feature" in _one_line(capsys)

    # frames carry subtask_index, the step texts are gone
    ds = write_lerobot_v3(tmp_path / "nosub", _episodes(n=2))
    (ds / "meta/subtasks.parquet").unlink()
    with pytest.raises(DatasetError, match="subtask_index but meta/subtasks.parquet"):
        open_dataset(ds)

    # tasks.parquet without any text column
    ds = write_lerobot_v3(tmp_path / "notext", _episodes(n=2))
    pq.write_table(pa.table({"task_index": [0, 1]}), ds / "meta/tasks.parquet")
    assert _cli_train(tmp_path, ds) == 2
    assert "no task text" in _one_line(capsys)


def test_unlabelled_episodes_with_label_when_never_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMU_GUIDE_RUNS", str(tmp_path / "runs"))
    ds = write_lerobot_v3(tmp_path / "ds", _episodes(n=2, labelled=False))
    train(load_config(None, ["stage=tokenizer", f"data.path={ds}", "data.image_size=32", "optim.max_steps=1",
                             "model={channels: [16, 32], levels: [5, 5]}", f"checkpoint.dir={tmp_path / 'tok'}"]),
          progress=False)
    tok = latest_checkpoint(tmp_path / "tok" / "checkpoints")
    capsys.readouterr()
    rc = cli(["train", "--stage", "next_token", "--no-progress", f"data.path={ds}", f"tokenizer={tok}", TINY,
              "optim.max_steps=1", "label.when=never", f"checkpoint.dir={tmp_path / 'nt'}"])
    assert rc == 2
    assert "episode 0 has no step (subtask) labels and label.when is 'never'" in _one_line(capsys)
    rc = cli(["train", "--stage", "next_token", "--no-progress", f"data.path={ds}", f"tokenizer={tok}", TINY,
              "optim.max_steps=1", "label.gripper=claw", f"checkpoint.dir={tmp_path / 'nt'}"])
    assert rc == 2
    assert "label.gripper: no state column 'claw'" in _one_line(capsys)
