"""Load and faults: camera frames at 60 Hz for 60 s (every 10th invalid) while a continuous goal
plans. Memory stays bounded, no backlog builds up (each step uses a frame close to the newest),
invalid frames are rejected and counted while planning goes on. The numbers themselves are
reported by bench/ros_node_load.py (docs/BENCHMARKS.md); here only bounds are checked.

EMU_ROS_LOAD_SECONDS shortens the run for local iterations (default 60)."""

from __future__ import annotations

import importlib.util
import os

import pytest
from ros_tier import ROOT, require_ros_venv

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def _bench():
    spec = importlib.util.spec_from_file_location("ros_node_load", ROOT / "bench" / "ros_node_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_60hz_frames_for_60s_while_planning(tmp_path):
    python = require_ros_venv()
    seconds = float(os.environ.get("EMU_ROS_LOAD_SECONDS", "60"))
    r = _bench().run_load(python, tmp_path, hz=60.0, seconds=seconds, size=(240, 320), bad_every=10, oneshot_trials=1)
    assert r["node_alive_after"] and r["final_status"] == "canceled"
    # invalid frames are rejected and counted. Sensor-data QoS (best effort, keep last 5) lets the
    # subscription queue overwrite samples while the node is busy, valid and invalid alike: the
    # rejected share of what arrived matches the sent share (1 in bad_every)
    assert 0 < r["frames_rejected"] <= r["frames_sent_invalid"]
    share = r["frames_rejected"] / (r["frames_rejected"] + r["frames_received"])
    assert abs(share - r["frames_sent_invalid"] / (r["frames_sent_invalid"] + r["frames_sent_valid"])) < 0.05
    reasons = " | ".join(r["rejected_by_reason"])
    for kind in ("unsupported image encoding", "data size", "image data is empty", "compressed image"):
        assert kind in reasons, (kind, reasons)
    # the subscription keeps taking frames for the whole run: the received counter (published at
    # 2 Hz) grows in every 5 s window. How many arrive is a throughput figure that moves with other
    # load on the host (90% alone, 42% in one CI run): bench/ros_node_load.py reports it; here only
    # a floor that a stalled or blocked subscription would miss
    received = [row[0] for row in r["stats_series"]]
    # the stream starts after the first stats and stops before the last: trim the flat ends
    first = next(i for i, n in enumerate(received) if n > received[0]) - 1
    last = received.index(received[-1])
    received = received[first : last + 1]
    assert len(received) >= 2 * seconds * 0.8, len(received)
    window = 10  # stats messages
    stalls = [i for i in range(len(received) - window) if received[i + window] <= received[i]]
    assert not stalls, f"no frame received in the 5 s after stats message(s) {stalls[:5]}"
    assert r["frames_received"] >= 0.2 * r["frames_sent_valid"]
    # planning went on at its configured rate (5 Hz) throughout
    assert r["steps"] >= 0.5 * 5.0 * seconds
    # no backlog: steps are planned from a frame close to the newest. A backlog (a queue of old
    # frames) would push the typical age to seconds. A lone scheduler stall on a shared 2-core host
    # does not, but it ages every step planned during it: 3 s at 5 steps/s is 5% of a 60 s run
    # (seen: max 2.9 s with p95 1.04 s, p50 30 ms, in a full-suite run). So bound the median and
    # p90, not p95 or the max.
    ages = r["frame_age_at_planning_ms"]
    assert ages["p50"] < 300 and ages["p90"] < 1000, ages
    # bounded memory: keeping only the latest frame, RSS does not grow with frames received
    rss = r["rss_mb"]
    assert rss["late_median"] - rss["early_median"] < 30 and rss["peak"] < rss["early_median"] + 60
    assert r["oneshot_frame_in_to_first_feedback_ms"]["n"] == 1
