"""Metrics: one JSON object per line (``metrics.jsonl``) and loss curves as PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL log. A resumed run drops lines past its resume step (they are replayed)."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        # Non-finite floats become null: the file stays strict JSON.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean, default=float) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: line {i} is not JSON: {line[:80]!r}") from None
    return rows


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Up to three panels against step: training losses, held-out rates (0..1), other held-out metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    skip = {"step", "split", "time_s", "samples", "lr", "samples_per_s", "grad_norm"}
    train_keys = sorted({k for r in train for k in r if "loss" in k or k.startswith("ce_")})
    eval_keys = sorted({k for r in evals for k in r if k not in skip})
    rate_keys = [k for k in eval_keys if k.endswith(("_acc", "_frac"))]
    other_keys = [k for k in eval_keys if k not in rate_keys]
    panels = [(t, src, keys) for t, src, keys in (
        ("train", train, train_keys), ("held-out rates", evals, rate_keys), ("held-out", evals, other_keys)) if keys]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 3.2), squeeze=False)
    for ax, (name, src, keys) in zip(axes.flat, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in src if isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if src is evals else None, ms=3, label=key)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return png_path
