"""Bag replay never crashes: the faults users' bags have, each a one-line error and exit status 2,
checked before any model loads, and nothing left at --out.

Fixtures under fixtures/rosbag2/ are rosbag2's own test bags (github.com/ros2/rosbag2, commit
25304dd3, Apache-2.0, LICENSE beside them): talker (mcap, std_msgs only), empty_bag (sqlite3,
no user topics), service_events (mcap, bag_with_topics_and_service_events), wrong_rmw_test (mcap,
serialization_format 'wrong_format'), cdr_test (mcap, test_msgs). The rest are built here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from emu_guide import cli
from emu_ros import convert, replay

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rosbag2"
ENV_ID, SEED = "sim_envs/TableClear-v0", 1000000


def _camera_bag(path: Path, storage: str, n: int = 40, size: int = 96) -> Path:
    rng = np.random.default_rng(0)
    with replay.BagOut(path, storage) as w:
        for i in range(n):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            w.write("/cam", convert.image_msg(w.factory, image, 1.0 + i), (1 + i) * 1_000_000_000)
    return path


def _truncate(bag: Path, suffix: str, keep: float) -> Path:
    data = next(bag.glob(f"*{suffix}"))
    raw = data.read_bytes()
    data.write_bytes(raw[: int(len(raw) * keep)])
    return bag


def _faults(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input path, a phrase the one-line error must contain)."""
    cases = {name: (FIXTURES / name, why) for name, why in [
        ("talker", "has no Image/CompressedImage topic"), ("empty_bag", "has no Image/CompressedImage topic"),
        ("cdr_test", "has no Image/CompressedImage topic"), ("service_events", "cannot read bag"),
        ("wrong_rmw_test", "wrong_format"),
    ]}  # fmt: skip
    built = tmp / "built"
    built.mkdir()
    cases["truncated_mcap"] = (_truncate(_camera_bag(built / "trunc_mcap", "mcap"), ".mcap", 0.5), "cannot read bag")
    cases["truncated_db3"] = (_truncate(_camera_bag(built / "trunc_db3", "sqlite3"), ".db3", 0.3), "cannot read bag")
    random_bag = built / "random_bytes"
    random_bag.mkdir()
    (random_bag / "random_bytes_0.mcap").write_bytes(np.random.default_rng(1).bytes(4096))
    cases["random_bytes"] = (random_bag, "cannot read bag")
    random_file = built / "random.mcap"
    random_file.write_bytes(np.random.default_rng(2).bytes(4096))
    cases["random_file"] = (random_file, "cannot read bag")
    not_a_bag = built / "not_a_bag"
    not_a_bag.mkdir()
    (not_a_bag / "notes.txt").write_text("hello")
    cases["not_a_bag"] = (not_a_bag, "is not a rosbag2 bag")
    empty_dir = built / "empty_dir"
    empty_dir.mkdir()
    cases["empty_dir"] = (empty_dir, "is not a rosbag2 bag")
    cases["missing"] = (built / "nope", "does not exist")
    bad_meta = built / "bad_metadata"
    shutil.copytree(FIXTURES / "talker", bad_meta)
    (bad_meta / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed")
    cases["bad_metadata"] = (bad_meta, "cannot read bag")
    return cases


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return _faults(tmp_path_factory.mktemp("faults"))


FAULT_NAMES = ["talker", "empty_bag", "cdr_test", "service_events", "wrong_rmw_test", "truncated_mcap", "truncated_db3",
               "random_bytes", "random_file", "not_a_bag", "empty_dir", "missing", "bad_metadata"]  # fmt: skip


@pytest.mark.parametrize("name", FAULT_NAMES)
def test_every_fault_is_one_line_exit_2_before_the_model_and_nothing_at_out(faults, name, tmp_path, capsys, monkeypatch):
    import model_runtime.backends.base as base

    loaded = []
    monkeypatch.setattr(base, "load_backend", lambda *a, **k: loaded.append(a) or pytest.fail("the model loaded first"))
    bag, why = faults[name]
    outs = tmp_path / "outs"
    outs.mkdir()
    rc = cli.main(["replay", str(bag), "--instruction", "clear the table", "--out", str(outs / "out"), "--backend", "torch"])
    captured = capsys.readouterr()
    text = (captured.out + captured.err).strip()
    assert rc == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert text.startswith("emu-guide replay: ") and why in text, text
    assert not loaded and list(outs.iterdir()) == []  # no model, no output bag, no partial


def test_a_bag_that_breaks_mid_replay_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """The pre-check passes, then reading breaks part-way (rosbags refuses truncated files at open,
    so the break is injected after 5 real frames): one line, exit 2, the partial output removed."""
    bag = _camera_bag(tmp_path / "in", "mcap", n=50)
    real = replay.read_camera

    def breaking(path, topic=None):
        for i, msg in enumerate(real(path, topic)):
            if i == 5:
                raise replay.BagError(f"cannot read bag {path}: chunk 2 is corrupt")
            yield msg

    monkeypatch.setattr(replay, "read_camera", breaking)
    outs = tmp_path / "outs"
    rc = cli.main(["replay", str(bag), "--instruction", "clear the table", "--out", str(outs / "out"), "--backend", "oracle",
                   "--sim-env", ENV_ID, "--seed", str(SEED), "--max-steps", "500", "--every-s", "0"])  # fmt: skip
    text = capsys.readouterr().out.strip()
    assert rc == 2 and text == f"emu-guide replay: cannot read bag {bag}: chunk 2 is corrupt"
    assert list(outs.iterdir()) == []  # the partial bag was written, then removed


def test_output_keeps_the_input_qos_profiles_and_rename_only_on_success(tmp_path):
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    from rosbags.rosbag2 import StoragePlugin, Writer

    from emu_ros import interfaces

    qos = Qos(QosHistory.KEEP_LAST, 5, QosReliability.BEST_EFFORT, QosDurability.VOLATILE, QosTime(0, 0), QosTime(0, 0),
              QosLiveliness.AUTOMATIC, QosTime(0, 0), avoid_ros_namespace_conventions=False)  # fmt: skip
    ts = interfaces.typestore()
    factory = convert.rosbags_factory(ts)
    src = tmp_path / "in"
    with Writer(src, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/cam", "sensor_msgs/msg/Image", typestore=ts, offered_qos_profiles=[qos])
        for i in range(3):
            msg = convert.image_msg(factory, np.zeros((8, 8, 3), np.uint8), 1.0 + i)
            w.write(conn, (1 + i) * 1_000_000_000, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    out = tmp_path / "copy"
    with replay.BagOut(out) as writer:
        for m in replay.read_camera(src):
            writer.write_raw(m.topic, m.msgtype, m.timestamp_ns, m.raw, m.qos)
        assert not out.exists() and writer.tmp.exists()  # written under a temporary name until done
    with AnyReader([out]) as reader:
        got = reader.connections[0].ext.offered_qos_profiles
    assert len(got) == 1 and got[0].reliability == QosReliability.BEST_EFFORT and got[0].depth == 5
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError), replay.BagOut(failed) as writer:
        writer.write_raw("/cam", "sensor_msgs/msg/Image", 1, b"\x00\x01\x00\x00")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "in"]  # the failed one left nothing


def test_no_image_message_wording():
    with pytest.raises(replay.BagError) as err:
        replay.check_bag(FIXTURES / "talker")
    assert "has no Image/CompressedImage topic; it has: [" in str(err.value) and "/topic (std_msgs/msg/String)" in str(err.value)
    with pytest.raises(replay.BagError, match="has no topic '/nope' of type Image/CompressedImage"):
        replay.check_bag(FIXTURES / "talker", "/nope")
