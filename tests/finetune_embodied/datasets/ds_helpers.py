from __future__ import annotations

import numpy as np

from finetune_embodied.datasets import Episode

CAM = "observation.images.front"


def make_episode(length: int, seed: int, task: str = "clear the table", size: int = 64) -> Episode:
    """A synthetic episode whose frames are easy to tell apart after lossy video coding:
    a bright square moves one step per frame over a flat background."""
    rng = np.random.default_rng(seed)
    frames = np.full((length, size, size, 3), 40 + 10 * (seed % 5), dtype=np.uint8)
    for t in range(length):
        x = (4 * t) % (size - 12)
        frames[t, 8:20, x : x + 12] = (230, 60, 30)
    steps = ["pick up the red cup", "place the red cup in the bin"]
    cut = length // 2
    return Episode(
        task=task,
        images={CAM: frames},
        state=rng.normal(size=(length, 5)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
        subtasks=[steps[0]] * cut + [steps[1]] * (length - cut),
    )



def make_episodes() -> list[Episode]:
    return [make_episode(8 + i, seed=i, task=["clear the table", "sort the blocks"][i % 2]) for i in range(5)]
