"""The step verifier: did this step happen between these two camera frames?

A small learned network shipped beside the guidance LM (``step_verifier/`` in a model directory).
It sees the frame the step was planned on, the frame after the step was executed, and the step's
sentence, and gives the probability that the step happened. The loop's verifier asks it after
every executed step (planner/verify.py); a robot's executor result is a second opinion.

Why a separate network and not the LM: asked from the post-step frame alone, a yes/no answer did
not train in the LM (one answer token per 163-token frame: docs/training.md, session 12), while
the change between two frames, read by convolutions at pixel level and conditioned on the
sentence, is a dense, local signal (docs/training.md, "A step verifier", session 13).

Architecture (``StepVerifierNet``): a convolutional encoder over both frames and their difference
stacked as 9 channels (96 px -> 12 x 12 features), modulated by the sentence (a GRU over its words;
FiLM), then pooled by a sentence-conditioned attention over the grid and a max, and a
small MLP to one logit. Words the training data never used map to <unk>; ``unknown_words`` lets
a caller say so.

Files: ``step_verifier/config.json`` (image size, widths, vocabulary, threshold) and
``step_verifier/model.safetensors``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["StepVerifier", "StepVerifierConfig", "StepVerifierNet", "VERIFIER_DIR", "batch_words", "encode_words",
           "images_to_tensor", "sentence_words", "vocab_index"]

VERIFIER_DIR = "step_verifier"
PAD, UNK = 0, 1  # word ids; the vocabulary's real words start at 2


def sentence_words(text: str) -> list[str]:
    """The words of a step sentence as the verifier reads them (lower case, punctuation dropped)."""
    return re.findall(r"[a-z0-9']+", str(text).lower())


@dataclass
class StepVerifierConfig:
    vocab: list[str] = field(default_factory=list)  # index i + 2 -> word (0 pad, 1 <unk>)
    image_size: int = 96
    width: int = 64  # encoder channels at 12 x 12
    text_dim: int = 64
    max_words: int = 16
    threshold: float = 0.5  # P(happened) at or above it: the step happened

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "text_dim", "max_words"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (8 if name == "image_size" else 1):
                raise ValueError(f"{name} must be an integer >= {8 if name == 'image_size' else 1}, got {value!r}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a number in (0, 1), got {self.threshold!r}")
        if not isinstance(self.vocab, list) or not all(isinstance(w, str) for w in self.vocab):
            raise ValueError("vocab must be a list of words")

    def to_dict(self) -> dict:
        return asdict(self)


def vocab_index(vocab: Sequence[str]) -> dict[str, int]:
    """word -> id (after the pad and <unk> ids)."""
    return {w: i + 2 for i, w in enumerate(vocab)}


def encode_words(words: Sequence[str], vocab_index: dict[str, int], max_words: int) -> list[int]:
    ids = [vocab_index.get(w, UNK) for w in words][:max_words]
    return ids or [UNK]


class StepVerifierNet(torch.nn.Module):
    """(before, after, words) -> logit that the step happened. Images (B, 3, S, S) floats in [0, 1]."""

    def __init__(self, cfg: StepVerifierConfig) -> None:
        super().__init__()
        w, t = cfg.width, cfg.text_dim
        self.cfg = cfg
        # Early fusion: the first layer sees both frames and their difference at pixel level, where a
        # small object's move is a few pixels (a late mix of per-frame features learnt slowly: session 13).
        self.encoder = torch.nn.Sequential(  # S -> S / 8 (96 -> 12)
            torch.nn.Conv2d(9, 32, 5, stride=2, padding=2), torch.nn.GELU(),
            torch.nn.Conv2d(32, 48, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(48, w, 3, stride=2, padding=1), torch.nn.GELU(),
        )
        self.words = torch.nn.Embedding(len(cfg.vocab) + 2, t, padding_idx=PAD)
        self.sentence = torch.nn.GRU(t, t, batch_first=True)
        self.film = torch.nn.Linear(t, 2 * w)
        self.context = torch.nn.Conv2d(w, w, 3, padding=1)
        self.attend = torch.nn.Conv2d(w, 1, 1)
        self.out = torch.nn.Sequential(torch.nn.Linear(2 * w + t, w), torch.nn.GELU(), torch.nn.Linear(w, 1))

    def encode_sentence(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = torch.nn.utils.rnn.pack_padded_sequence(self.words(words), lengths.cpu(), batch_first=True,
                                                         enforce_sorted=False)
        _, h = self.sentence(packed)
        return h[-1]  # (B, t)

    def forward(self, before: torch.Tensor, after: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.encoder(torch.cat([before, after, after - before], dim=1))
        s = self.encode_sentence(words, lengths)
        gamma, beta = self.film(s).chunk(2, dim=-1)
        x = x * (1 + gamma[..., None, None]) + beta[..., None, None]
        x = F.gelu(self.context(x))
        flat = x.flatten(2)  # (B, w, h*w)
        attn = torch.softmax(self.attend(x).flatten(2), dim=-1)
        pooled = torch.cat([(flat * attn).sum(-1), flat.amax(-1), s], dim=-1)
        return self.out(pooled).squeeze(-1)


def images_to_tensor(images: Sequence[np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """(B, H, W, 3) uint8 (any H, W) -> (B, 3, size, size) float in [0, 1]."""
    from model_runtime.tokenizers.base import resize_image

    arr = np.stack([resize_image(np.asarray(im), (size, size)) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def batch_words(texts: Sequence[str], vocab_index: dict[str, int], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [encode_words(sentence_words(t), vocab_index, max_words) for t in texts]
    lengths = torch.tensor([len(i) for i in ids])
    padded = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for k, row in enumerate(ids):
        padded[k, : len(row)] = torch.tensor(row)
    return padded, lengths


class StepVerifier:
    """A trained step verifier loaded from its directory; ``p_happened(before, after, text)``."""

    def __init__(self, net: StepVerifierNet) -> None:
        self.net = net.eval()
        self.cfg = net.cfg
        self.vocab_index = vocab_index(self.cfg.vocab)

    @classmethod
    def load(cls, directory: str | Path) -> StepVerifier:
        from model_runtime.net_dir import load_net_dir

        return cls(load_net_dir(directory, StepVerifierConfig, StepVerifierNet, "step verifier"))

    def save(self, directory: str | Path) -> None:
        from model_runtime.net_dir import save_net_dir

        save_net_dir(directory, self.cfg, self.net)

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in sentence_words(text) if w not in self.vocab_index]

    def p_happened(self, before: np.ndarray, after: np.ndarray, text: str) -> tuple[float, float]:
        """(probability that ``text`` happened between the two frames (H, W, 3) uint8, milliseconds)."""
        t0 = time.perf_counter()
        size = self.cfg.image_size
        b, a = images_to_tensor([before], size), images_to_tensor([after], size)
        words, lengths = batch_words([text], self.vocab_index, self.cfg.max_words)
        with torch.inference_mode():
            p = float(torch.sigmoid(self.net(b, a, words, lengths))[0])
        return p, 1e3 * (time.perf_counter() - t0)
