"""The visual report of guided episodes: a folder a person can read in a minute.

``write_report(out_dir, episodes)`` writes

- ``plan.txt``: per episode the instruction and every step: sentence, action goal, outcome, latency,
  and for "perceive" models what the model saw in the frames before and after the step next to
  the ground truth (when the env gives one), and the verification decision with its reason;
- ``contact_sheet_<task>_seed<seed>.png``: one row per planning call: frame before | predicted
  subgoal image | frame after, labelled with the sentence, the goal, the outcome, the perceptions
  and the verification;
- ``metrics.json``: the episodes (steps, decisions and why) and a summary;
- optionally ``episode_<task>_seed<seed>.mp4`` (PyAV): the same rows as a short video.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from planner.runner import EpisodeResult, StepRecord
from planner.verify import describe_perception

__all__ = ["contact_sheet", "format_goal", "perception_lines", "plan_text", "write_report", "write_video"]

TILE = 192  # px: each small sim image is upscaled to this for legibility
TEXT_W = 460  # px: the label column
_BG = (250, 250, 250)
_OUTCOME_COLOURS = {
    "done": (30, 140, 60),
    "final": (30, 110, 200),
    "failed": (200, 50, 40),
    "final_rejected": (200, 50, 40),
    "limit": (160, 60, 160),
}


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def format_goal(goal: dict[str, Any]) -> str:
    """One line: 'pick red cup', 'place red cup -> rack @ (0.31, -0.12, 0.00) table'."""
    if not goal:
        return "-"
    if goal.get("status", "ok") != "ok":
        return f"{goal['status'].upper()}: {goal.get('reason', '')}"
    s = f"{goal['verb']} {goal['object']}".strip()
    if goal.get("target"):
        s += f" -> {goal['target']}"
    pose = goal.get("target_pose")
    if pose:
        s += f" @ ({pose[0]:.2f}, {pose[1]:.2f}, {pose[2]:.2f}) {goal.get('frame_id', '')}"
    conf = goal.get("confidence")
    if conf is not None and conf < 1.0:
        s += f" conf {conf:.2f}"
    return s


def _latency(step: StepRecord) -> str:
    t = step.latency_ms
    parts = [f"plan {t.get('total', float('nan')):.1f} ms"]
    if "text" in t and "image" in t:
        parts.append(f"(text {t['text']:.1f} + image {t['image']:.1f})")
    if "planner" in t:
        parts.append(f"parse+ground {t['planner']:.1f} ms")
    return " ".join(parts)


def _match(m: dict[str, Any] | None) -> str:
    """'right' or what differs: 'missed red cup; extra blue fork; cell wrong: teal knife; holding wrong'."""
    if m is None:
        return ""
    if m["exact"]:
        return "right"
    parts = [f"{k} {', '.join(m[key])}" for k, key in (("missed", "missed"), ("extra", "extra"),
                                                        ("cell wrong:", "wrong_cell")) if m[key]]
    if not m["holding_ok"]:
        parts.append("holding wrong")
    return "; ".join(parts)


def perception_lines(step: StepRecord) -> list[tuple[str, str]]:
    """(kind, text) lines on what the model perceived and how the step was verified, for plan.txt and
    the contact sheet: kinds "sees", "truth", "verify", "after", "after truth"."""
    lines: list[tuple[str, str]] = []
    if step.perception is not None:
        reused = " (reused from the last check)" if step.perception_reused else ""
        lines.append(("sees", describe_perception(step.perception) + reused))
    if step.gt_perception is not None and step.perception is not None:
        lines.append(("truth", f"{describe_perception(step.gt_perception)} [{_match(step.perception_match)}]"))
    v = step.verification
    if v is not None:
        frames = v.get("frames") or {}
        lines.append(("verify", f"{'done' if v['done'] else 'not done'} (decided by {v['decided_by']}): {v['reason']}"))
        if frames.get("perception") is not None:
            lines.append(("after", describe_perception(frames["perception"])))
            if v.get("gt_after") is not None:
                lines.append(("after truth", f"{describe_perception(v['gt_after'])} [{_match(v.get('after_match'))}]"))
    return lines


def plan_text(episodes: Sequence[EpisodeResult]) -> str:
    lines = []
    for ep in episodes:
        lines.append(f"# {ep.task} seed {ep.seed}  backend {ep.backend} ({ep.model_id})  decode {ep.decode_mode}")
        lines.append(f"instruction: {ep.instruction}")
        for s in ep.steps:
            lines.append(f"{s.call:3d}. [{s.outcome}] {s.text}")
            lines.append(f"     goal: {format_goal(s.goal)}")
            lines.append(f"     latency: {_latency(s)}; attempts {s.attempts}")
            if s.allowed_names is not None:
                # the loop times the names' source as "detect" (the detector) or "perceive" (the model)
                source = "the detector's names" if "detect" in s.latency_ms else "the model's own perception"
                lines.append(f"     may name: {', '.join(s.allowed_names) or 'nothing'} (grounded in {source})")
            seen = perception_lines(s)
            lines.extend(f"     {kind}: {text}" for kind, text in seen)
            if s.reason and s.verification is None:
                lines.append(f"     why: {s.reason}")
        verdict = "SUCCESS" if ep.success else "FAILED"
        lines.append(f"result: {verdict}: {ep.completed_steps}/{ep.num_gt_steps} steps, {ep.replans} re-plans, "
                     f"{ep.retries} retries, {ep.wall_s:.1f} s; {ep.stop_reason}")
        lines.append("")
    return "\n".join(lines)


def _tile(image: np.ndarray | None, label: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    if image is None:
        tile = Image.new("RGB", (TILE, TILE), (225, 225, 225))
        d = ImageDraw.Draw(tile)
        d.text((TILE // 2, TILE // 2), label, fill=(110, 110, 110), font=_font(14), anchor="mm")
        return np.asarray(tile)
    img = Image.fromarray(np.ascontiguousarray(image))
    h, w = image.shape[:2]
    scale = TILE / max(h, w)
    resample = Image.NEAREST if scale >= 2 else Image.BILINEAR
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    tile = Image.new("RGB", (TILE, TILE), _BG)
    tile.paste(img, ((TILE - img.width) // 2, (TILE - img.height) // 2))
    return np.asarray(tile)


_PERCEPTION_COLOURS = {"sees": (0, 70, 120), "truth": (120, 80, 0), "verify": (30, 30, 30),
                       "after": (0, 70, 120), "after truth": (120, 80, 0)}


def _label(s: StepRecord) -> list[tuple[str, tuple[int, int, int], str]]:
    """The label column of one contact-sheet row: (text, colour, "body" | "small") lines."""
    out: list[tuple[str, tuple[int, int, int], str]] = []
    out += [(ln, (0, 0, 0), "body") for ln in textwrap.wrap(f"{s.call}. {s.text}", 52)[:3]]
    out.append((f"[{s.outcome}] attempts {s.attempts}", _OUTCOME_COLOURS.get(s.outcome, (0, 0, 0)), "body"))
    grey = (40, 40, 40)
    out += [(ln, grey, "small") for ln in textwrap.wrap("goal: " + format_goal(s.goal), 62)[:3]]
    out.append((_latency(s), grey, "small"))
    if s.allowed_names is not None:
        out += [(ln, (0, 90, 140), "small") for ln in textwrap.wrap(f"may name: {', '.join(s.allowed_names) or 'nothing'}", 62)[:2]]
    if s.gt_text is not None and s.text_exact is False:
        out += [(ln, (120, 80, 0), "small") for ln in textwrap.wrap(f"ground truth: {s.gt_text}", 62)[:2]]
    for kind, text in perception_lines(s):
        colour = _PERCEPTION_COLOURS.get(kind, grey)
        if kind == "verify":
            colour = _OUTCOME_COLOURS["done" if s.verification and s.verification["done"] else "failed"]
        out += [(ln, colour, "small") for ln in textwrap.wrap(f"{kind}: {text}", 62)[:4]]
    if s.reason and s.verification is None:
        out += [(ln, (90, 90, 90), "small") for ln in textwrap.wrap(f"why: {s.reason}", 62)[:4]]
    return out


def contact_sheet(ep: EpisodeResult) -> np.ndarray:
    """HxWx3 uint8 image: a header, then per planning call before | subgoal | after | label (a row
    grows below the images when its label needs the room: perceptions and the verification)."""
    from PIL import Image, ImageDraw

    pad = 6
    header_h = 64
    heights = {"body": 17, "small": 15}
    labels = [_label(s) for s in ep.steps]
    rows_h = [max(TILE, 4 + sum(heights[f] for _, _, f in lab)) + pad for lab in labels] or [TILE + pad]
    width = 3 * (TILE + pad) + TEXT_W + pad
    height = header_h + sum(rows_h) + pad
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    f_title, f_body, f_small = _font(16), _font(13), _font(12)
    fonts = {"body": f_body, "small": f_small}
    verdict = "SUCCESS" if ep.success else "FAILED"
    draw.text((pad, 4), f"{ep.task} seed {ep.seed}  |  {ep.backend} / {ep.decode_mode}  |  {verdict} "
              f"{ep.completed_steps}/{ep.num_gt_steps} steps, {ep.replans} re-plans", fill=(0, 0, 0), font=f_title)
    draw.text((pad, 24), textwrap.shorten(f"instruction: {ep.instruction}", 110), fill=(40, 40, 40), font=f_body)
    for i, title in enumerate(("frame before", "predicted subgoal", "frame after")):
        draw.text((pad + i * (TILE + pad) + TILE // 2, header_h - 8), title, fill=(60, 60, 60), font=f_small,
                  anchor="mb")
    y = header_h
    for s, label, row_h in zip(ep.steps, labels, rows_h):
        acted = s.outcome not in ("final", "final_rejected") and s.attempts > 0
        for i, (img, missing) in enumerate(((s.before, "no frame"), (s.subgoal, "no subgoal image"),
                                            (s.after if acted else None,
                                             "not executed" if s.outcome == "failed" else "no action"))):
            sheet.paste(Image.fromarray(_tile(img, missing)), (pad + i * (TILE + pad), y))
        x, ty = pad + 3 * (TILE + pad), y + 4
        for text, colour, font in label:
            draw.text((x, ty), text, fill=colour, font=fonts[font])
            ty += heights[font]
        y += row_h
    return np.asarray(sheet)


def write_video(path: Path, ep: EpisodeResult, fps: int = 4) -> Path:
    """An MP4 of the contact-sheet rows (before | subgoal | after), one second per step (PyAV)."""
    import av

    rows = []
    for s in ep.steps:
        tiles = [_tile(s.before, "-"), _tile(s.subgoal, "no subgoal"), _tile(s.after, "-")]
        rows.append(np.concatenate(tiles, axis=1))
    if not rows:
        raise ValueError("write_video: the episode has no steps")
    h, w = rows[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2  # yuv420p needs even sizes
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        for row in rows:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(row[:h2, :w2]), format="rgb24")
            for _ in range(fps):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_report(
    out_dir: str | Path,
    episodes: Sequence[EpisodeResult],
    summary: dict[str, Any] | None = None,
    video: bool = False,
) -> dict[str, Path]:
    """Write plan.txt, one contact sheet per episode, metrics.json (and MP4s when ``video``)."""
    from PIL import Image

    if not episodes:
        raise ValueError("write_report: no episodes to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["plan"] = out / "plan.txt"
    paths["plan"].write_text(plan_text(episodes))
    for ep in episodes:
        name = f"{ep.task}_seed{ep.seed}" + ("" if ep.decode_mode in ("oracle", "") else f"_{ep.decode_mode}")
        p = out / f"contact_sheet_{name}.png"
        Image.fromarray(contact_sheet(ep)).save(p)
        paths[f"sheet:{name}"] = p
        if video:
            paths[f"video:{name}"] = write_video(out / f"episode_{name}.mp4", ep)
    metrics = {"summary": summary or {}, "episodes": [ep.to_dict() for ep in episodes]}
    paths["metrics"] = out / "metrics.json"
    paths["metrics"].write_text(json.dumps(metrics, indent=1, allow_nan=False))
    return paths
