"""planner.metrics: aggregate() field by field on hand-made episodes, and its helpers with exact numbers."""

from __future__ import annotations

import numpy as np
import pytest

from planner.metrics import PSNR_CAP_DB, aggregate, capped_psnr, percentile, subgoal_position_error, success_at_k


def _step(outcome="done", total=None, planner=None, text_exact=None, goal_correct=None, psnr=None, px=None, m=None,
          verb="pick", pixel=None, grounding=True, gerr=None):  # fmt: skip
    lat = {}
    if total is not None:
        lat["total"] = total
    if planner is not None:
        lat["planner"] = planner
    return {
        "outcome": outcome, "latency_ms": lat, "text_exact": text_exact, "goal_correct": goal_correct,
        "subgoal_psnr": psnr, "subgoal_pos_error_px": px, "subgoal_pos_error_m": m,
        "grounding": {"object_pixel": pixel} if grounding else {}, "goal": {"verb": verb},
        "grounding_error_m": gerr,
    }  # fmt: skip


def _episode(seed, success, completed, gt, steps, replans=0, retries=0, wall=1.0, all_correct=None, stop=""):
    return {
        "seed": seed, "success": success, "all_steps_correct": success if all_correct is None else all_correct,
        "completed_steps": completed, "num_gt_steps": gt, "steps": steps, "replans": replans, "retries": retries,
        "wall_s": wall, "stop_reason": stop,
    }  # fmt: skip


EPISODES = [
    _episode(1, True, 4, 4, [
        _step(total=10.0, planner=1.0, text_exact=True, goal_correct=True, psnr=30.0, px=2.0, m=0.01,
              pixel=(3, 4), gerr=0.02),
        _step(total=20.0, planner=2.0, text_exact=False, goal_correct=True, psnr=20.0, px=4.0, m=0.03,
              verb="place", pixel=None, gerr=0.04),
        _step(outcome="final", total=30.0, planner=3.0, text_exact=True, goal_correct=True),  # not a planned step
    ], replans=1, retries=0, wall=2.0),
    _episode(2, False, 1, 2, [
        _step(total=40.0, planner=4.0, text_exact=False, goal_correct=False, psnr=10.0, px=6.0, m=None,
              pixel=None, gerr=None),
        _step(outcome="backend_error", total=None, planner=5.0, text_exact=None, goal_correct=None),
    ], replans=3, retries=2, wall=4.0, all_correct=False, stop="step limit"),
    _episode(3, False, 0, 3, [
        _step(total=50.0, text_exact=True, goal_correct=False, psnr=None, px=None, pixel=(1, 1), grounding=True,
              gerr=0.10),
        _step(total=1000.0, planner=None, text_exact=False, goal_correct=False, verb="pick", grounding=False),
    ], replans=0, retries=4, wall=6.0, all_correct=True, stop="planning limit"),
]  # fmt: skip


def test_aggregate_every_field():
    s = aggregate(EPISODES)
    assert s["episodes"] == 3
    assert s["success_rate"] == pytest.approx(1 / 3)
    assert s["all_steps_correct_rate"] == pytest.approx(2 / 3)  # episode 3 counts as all-correct here
    assert s["avg_completed_steps"] == pytest.approx(5 / 3)
    assert s["num_gt_steps_max"] == 4
    assert s["avg_gt_steps"] == pytest.approx(3.0)
    # k=1: 3 eligible, 2 did >= 1; k=2: 3 eligible, 1; k=3: episodes 1 and 3 eligible, 1; k=4: only episode 1
    assert s["success_at_k"] == pytest.approx([2 / 3, 1 / 3, 1 / 2, 1.0])
    # planned steps: everything but "final" and "backend_error" (5 steps)
    assert s["step_text_exact"] == pytest.approx(2 / 5)  # True, False, False, True, False
    assert s["step_goal_accuracy"] == pytest.approx(2 / 5)  # True, True, False, False, False
    assert s["subgoal_psnr_db"] == pytest.approx(20.0)  # mean of 30, 20, 10 (None skipped)
    assert s["subgoal_pos_error_px"] == pytest.approx(4.0)
    assert s["subgoal_pos_error_m"] == pytest.approx(0.02)
    # pick steps with grounding: ep1 step1 (found), ep2 step1 (not), ep3 step1 (found); ep3 step2 has none
    assert s["grounding_found_rate"] == pytest.approx(2 / 3)
    assert s["grounding_error_m_median"] == pytest.approx(0.04)  # median of 0.02, 0.04, 0.10
    # latencies over ALL steps with a total (final included): 10, 20, 30, 40, 50, 1000
    assert s["latency_ms_p50"] == pytest.approx(35.0)
    assert s["latency_ms_p95"] == pytest.approx(float(np.percentile([10, 20, 30, 40, 50, 1000], 95)))
    assert s["latency_ms_p95"] > 700  # the slow step shows in p95, not in p50
    assert s["planner_ms_p50"] == pytest.approx(3.0)  # 1, 2, 3, 4, 5
    assert s["planner_ms_p95"] == pytest.approx(4.8)
    assert s["replans_per_episode"] == pytest.approx(4 / 3)
    assert s["retries_per_episode"] == pytest.approx(2.0)
    assert s["wall_s_per_episode"] == pytest.approx(4.0)
    assert s["failures"] == [
        {"seed": 2, "stop_reason": "step limit", "completed_steps": 1},
        {"seed": 3, "stop_reason": "planning limit", "completed_steps": 0},
    ]
    assert set(s) == {
        "episodes", "success_rate", "all_steps_correct_rate", "avg_completed_steps", "num_gt_steps_max",
        "avg_gt_steps", "success_at_k", "step_text_exact", "step_goal_accuracy", "subgoal_psnr_db",
        "subgoal_pos_error_px", "subgoal_pos_error_m", "grounding_found_rate", "grounding_error_m_median",
        "latency_ms_p50", "latency_ms_p95", "planner_ms_p50", "planner_ms_p95", "replans_per_episode",
        "retries_per_episode", "wall_s_per_episode", "failures", "verify_steps", "verify_false_done", "verify_missed_done",
    }  # fmt: skip
    assert s["verify_steps"] == 0 and s["verify_false_done"] is None  # no step was verified from frames


def test_aggregate_with_nothing_measured_and_no_episodes():
    ep = _episode(9, True, 1, 1, [_step(outcome="final", total=None)])
    s = aggregate([ep])
    for key in ("step_text_exact", "step_goal_accuracy", "subgoal_psnr_db", "subgoal_pos_error_px",
                "subgoal_pos_error_m", "grounding_found_rate", "grounding_error_m_median", "latency_ms_p50",
                "latency_ms_p95", "planner_ms_p50"):  # fmt: skip
        assert s[key] is None, key
    assert s["success_rate"] == 1.0 and s["failures"] == [] and s["success_at_k"] == [1.0]
    with pytest.raises(ValueError, match="no episodes"):
        aggregate([])


def test_percentile_skips_none_and_non_finite():
    assert percentile([1.0, None, float("nan"), 3.0, float("inf")], 50) == 2.0
    assert percentile([None], 50) is None and percentile([], 95) is None
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)


def test_success_at_k_exact():
    assert success_at_k([3, 1, 0, 2], 3) == pytest.approx([0.75, 0.5, 0.25])
    assert success_at_k([], 2) == [0.0, 0.0]
    # with plan lengths: a 1-step plan done in full is not counted at k = 2
    assert success_at_k([1, 2], 3, lengths=[1, 2]) == [1.0, 1.0, None]
    with pytest.raises(ValueError, match="lengths"):
        success_at_k([1, 2], 2, lengths=[1])


def test_capped_psnr_and_resizing():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert capped_psnr(a, a) == PSNR_CAP_DB == 100.0
    b = a.copy()
    b[0, 0, 0] = 110  # MSE = 100 / 192
    want = 10 * np.log10(255.0**2 / (100 / 192))
    assert capped_psnr(b, a) == pytest.approx(want, rel=1e-4)
    big = np.full((16, 16, 3), 100, np.uint8)
    assert capped_psnr(big, a) == PSNR_CAP_DB  # resized to the reference first
    with pytest.raises(ValueError, match="HxWx3"):
        capped_psnr(np.zeros((16, 16), np.uint8), a)


def test_subgoal_position_error():
    ref = np.full((40, 60, 3), 128, np.uint8)
    ref[10:16, 10:16] = (255, 0, 0)
    pred = np.full((40, 60, 3), 128, np.uint8)
    pred[10:16, 14:20] = (255, 0, 0)  # the same red object 4 px to the right
    px, m = subgoal_position_error(pred, ref)
    assert px == pytest.approx(4.0, abs=0.5) and m is None
    lost = np.full((40, 60, 3), 128, np.uint8)  # the object vanished: the worst error, the diagonal
    px, _ = subgoal_position_error(lost, ref)
    assert px == pytest.approx(np.hypot(40, 60))
    empty = np.full((40, 60, 3), 128, np.uint8)
    assert subgoal_position_error(pred, empty) == (None, None)


def test_frames_verification_rates_compare_the_frames_with_the_executor_report():
    from planner.metrics import frames_verification_rates

    def step(done, ok, by="check"):
        return {"verification": {"done": done, "executor_success": ok, "decided_by": by}}

    steps = [step(True, True), step(False, True), step(True, True), step(True, True),  # one of four missed
             step(True, False), step(False, False),  # one of two false
             step(False, True, by="checker"), {"verification": None}, step(True, None)]  # not counted
    rates = frames_verification_rates(steps)
    assert rates == {"verify_steps": 6, "verify_false_done": 0.5, "verify_missed_done": 0.25}
    assert frames_verification_rates([step(True, True, by="checker")]) == {
        "verify_steps": 0, "verify_false_done": None, "verify_missed_done": None}
