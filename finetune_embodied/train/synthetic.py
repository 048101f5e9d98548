"""Small generated data sets for smoke runs and tests (``data.source: synthetic``).

Not a stand-in for the real data path (the ``dataset`` source reads LeRobot v3 recordings): it
exists so that a training stage can be run end to end in seconds with a learnable task.

- Frames: coloured blocks on a table-coloured background (tokenizer stage).
- Sequences: a put-blocks-in-the-bin task through the real prompt builder and compact layout:
  the next step depends on the instruction and the done steps, the subgoal code grid on the
  step, so a model can learn both.
"""

from __future__ import annotations

import numpy as np

from model_runtime.layout import TokenLayout, compact
from model_runtime.prompt import TrainingSequence, build_training_sequence
from model_runtime.text_tokenizer import WordTokenizer

COLORS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}


def synthetic_frames(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8: 1-3 coloured blocks at random places on a plain table."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    out[:] = (150, 120, 90)
    colors = list(COLORS.values())
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            s = int(rng.integers(size // 8, size // 4))
            y, x = rng.integers(0, size - s, size=2)
            out[i, y : y + s, x : x + s] = colors[int(rng.integers(len(colors)))]
    return out


def _episode_steps(c1: str, c2: str) -> list[str]:
    return [f"pick up the {c1} block", f"place the {c1} block in the bin", f"pick up the {c2} block",
            f"place the {c2} block in the bin"]


def _grid(state: int, c1: int, c2: int, grid: int, codes: int) -> np.ndarray:
    """A code grid that is a deterministic function of the scene state (what a tokenizer would give)."""
    r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return ((r * 3 + c * 5 + state * 7 + c1 * 11 + c2 * 13) % codes).astype(np.int64)


def synthetic_sequences(
    n: int, grid: int, codes: int, seed: int, visual_loss_weight: float = 0.5
) -> tuple[list[TrainingSequence], TokenLayout, WordTokenizer]:
    """``n`` training sequences (every step of random episodes, the final "done" answer included)."""
    names = list(COLORS)
    texts = [f"put the {a} block and the {b} block in the bin" for a in names for b in names]
    texts += [s for a in names for s in _episode_steps(a, a)]
    tok = WordTokenizer.build(texts)
    layout = compact(tok.vocab_size, codes)
    rng = np.random.default_rng(seed)
    out: list[TrainingSequence] = []
    while len(out) < n:
        i1, i2 = rng.choice(len(names), size=2, replace=False)
        c1, c2 = names[i1], names[i2]
        steps = _episode_steps(c1, c2)
        instruction = f"put the {c1} block and the {c2} block in the bin"
        for t in range(len(steps) + 1):
            final = t == len(steps)
            out.append(
                build_training_sequence(
                    layout,
                    tok,
                    instruction,
                    steps[:t],
                    _grid(t, int(i1), int(i2), grid, codes),
                    None if final else steps[t],
                    None if final else _grid(t + 1, int(i1), int(i2), grid, codes),
                    is_final=final,
                    visual_loss_weight=visual_loss_weight,
                )
            )
    return out[:n], layout, tok
