"""Metrics for the closed loop: subgoal image quality, CALVIN-style success@k, percentiles.

Image metrics come from ``model_runtime.image_metrics`` (the reference implementation shared with the
tokenizer work): PSNR and the object-position error (same-hue blobs matched between the predicted
and the ground-truth subgoal image, centroid distance in pixels and on the table plane in metres).
Here they only get the glue a planner needs: a predicted image of another size is resized to the
reference, and identical images report ``PSNR_CAP_DB`` instead of infinity (JSON has no inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from emu_guide.types import CameraModel

__all__ = ["PSNR_CAP_DB", "aggregate", "capped_psnr", "frames_verification_rates", "percentile", "subgoal_position_error", "success_at_k"]

PSNR_CAP_DB = 100.0  # identical images report this instead of infinity


def _same_size(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    if pred.shape == ref.shape:
        return pred
    import cv2

    if pred.ndim != 3 or ref.ndim != 3:
        raise ValueError(f"expected HxWx3 images, got {pred.shape} and {ref.shape}")
    return cv2.resize(pred, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_AREA)


def capped_psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (pred resized to ref when they differ), capped at PSNR_CAP_DB."""
    from model_runtime.image_metrics import psnr as _psnr

    return float(min(PSNR_CAP_DB, _psnr(_same_size(pred, ref), ref)))


def subgoal_position_error(pred: np.ndarray, ref: np.ndarray, camera: CameraModel | None = None,
                           ) -> tuple[float | None, float | None]:
    """(mean pixel error, mean metres on the table) of the objects in ``pred`` vs ``ref``.

    Pixels are at ``ref``'s resolution; (None, None) when the reference shows no coloured object.
    """
    from model_runtime.image_metrics import object_position_error

    if camera is not None and (camera.width, camera.height) != (ref.shape[1], ref.shape[0]):
        camera = None
    err = object_position_error(_same_size(pred, ref), ref, camera=camera)
    if err.num_objects == 0:
        return None, None
    diag = math.hypot(ref.shape[0], ref.shape[1])
    # A reference object the prediction lost counts as the worst possible error (the diagonal).
    px = (err.mean_px * err.matched + diag * len(err.missing)) / err.num_objects if err.matched else diag
    metres = None
    if err.mean_m is not None and err.matched and not err.missing:
        metres = float(err.mean_m)
    return float(px), metres


def percentile(values: Sequence[float], q: float) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.percentile(vals, q)) if vals else None


def success_at_k(completed: Sequence[int], max_k: int, lengths: Sequence[int] | None = None) -> list[float]:
    """CALVIN-style: fraction of episodes that completed at least k consecutive steps, k = 1..max_k.

    With ``lengths`` (plan length per episode; tasks with plans of varying length) the fraction is
    over the episodes whose plan has at least k steps, so a short plan done in full is not a failure
    at larger k. Entries with no such episode are None.
    """
    if not completed:
        return [0.0] * max_k
    arr = np.asarray(completed)
    lens = np.full(len(arr), max_k) if lengths is None else np.asarray(lengths)
    if lens.shape != arr.shape:
        raise ValueError(f"success_at_k: {len(arr)} episodes but {len(lens)} lengths")
    out: list[float] = []
    for k in range(1, max_k + 1):
        eligible = lens >= k
        out.append(float((arr[eligible] >= k).mean()) if eligible.any() else None)  # type: ignore[arg-type]
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def frames_verification_rates(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The closed loop's verification from frames against the executor's own report (in the sims,
    the simulator's check at the skill's end), over executed steps the frames decided (not the
    checker): ``verify_false_done`` (of the steps the executor says failed, the share judged done)
    and ``verify_missed_done`` (of those it says succeeded, judged not done); None without any."""
    judged = [(v["done"], v["executor_success"]) for v in (s.get("verification") for s in steps)
              if v and v.get("executor_success") is not None and "checker" not in (v.get("decided_by") or "")]
    failed = [done for done, ok in judged if not ok]
    succeeded = [done for done, ok in judged if ok]
    return {"verify_steps": len(judged),
            "verify_false_done": sum(failed) / len(failed) if failed else None,
            "verify_missed_done": sum(not d for d in succeeded) / len(succeeded) if succeeded else None}


def aggregate(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary metrics over episode dicts (``EpisodeResult.to_dict()``) of ONE task/backend/mode."""
    if not episodes:
        raise ValueError("aggregate: no episodes")
    n = len(episodes)
    max_k = max(e["num_gt_steps"] for e in episodes)
    steps = [s for e in episodes for s in e["steps"]]
    planned = [s for s in steps if s["outcome"] not in ("final", "backend_error")]
    latencies = [s["latency_ms"].get("total") for s in steps if s["latency_ms"].get("total") is not None]
    planner_ms = [s["latency_ms"].get("planner") for s in steps if s["latency_ms"].get("planner") is not None]
    return {
        "episodes": n,
        "success_rate": sum(e["success"] for e in episodes) / n,
        "all_steps_correct_rate": sum(e["all_steps_correct"] for e in episodes) / n,
        "avg_completed_steps": float(np.mean([e["completed_steps"] for e in episodes])),
        "num_gt_steps_max": max_k,
        "avg_gt_steps": float(np.mean([e["num_gt_steps"] for e in episodes])),
        "success_at_k": success_at_k([e["completed_steps"] for e in episodes], max_k,
                                     [e["num_gt_steps"] for e in episodes]),
        "step_text_exact": _mean([s["text_exact"] for s in planned]),
        "step_goal_accuracy": _mean([s["goal_correct"] for s in planned]),
        "subgoal_psnr_db": _mean([s["subgoal_psnr"] for s in planned]),
        "subgoal_pos_error_px": _mean([s["subgoal_pos_error_px"] for s in planned]),
        "subgoal_pos_error_m": _mean([s.get("subgoal_pos_error_m") for s in planned]),
        "grounding_found_rate": _mean([s["grounding"].get("object_pixel") is not None for s in planned
                                       if s.get("grounding") and s["goal"].get("verb") == "pick"]),
        "grounding_error_m_median": percentile([s.get("grounding_error_m") for s in planned], 50),
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p95": percentile(latencies, 95),
        "planner_ms_p50": percentile(planner_ms, 50),
        "planner_ms_p95": percentile(planner_ms, 95),
        "replans_per_episode": float(np.mean([e["replans"] for e in episodes])),
        **frames_verification_rates(steps),
        "retries_per_episode": float(np.mean([e["retries"] for e in episodes])),
        "wall_s_per_episode": float(np.mean([e["wall_s"] for e in episodes])),
        "failures": [{"seed": e["seed"], "stop_reason": e["stop_reason"], "completed_steps": e["completed_steps"]}
                     for e in episodes if not e["success"]],
    }
