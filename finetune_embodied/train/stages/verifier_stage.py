"""Stage ``verifier``: train the step verifier (``model_runtime.step_verifier``) on a recording.

Samples (``finetune_embodied.sequences.verification_pairs``): per step the guidance loop would
say, the frame it was planned on and a later frame, with the step's sentence and whether it
happened: the step's end (yes for a plan step or a recovery; no for a failed attempt or the plan
step an injected mistake displaced), a frame part way into it (no), and the same two frames asked
about other steps of the plan, one with the same verb where there is one (no). The recording's step kinds tell mistakes from plan steps
(``emu-guide record`` stores them); a recording without them has every step happen, so its only
"no" samples are the part-way and other-step ones (said in the log). Episodes without step labels
are labelled from the data first, as in the LM stages (``label`` settings, docs/datasets.md).

Loss: binary cross-entropy, the positive class weighted by the negatives-to-positives ratio.
Held-out evaluation (whole episodes held out): accuracy, false "done" (of the steps that did not
happen, the share judged done) and missed "done" (of those that did, judged not done), at the
verifier's threshold, overall and per source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from finetune_embodied.train.stages.base import Stage, split_heldout


class VerifierSample(NamedTuple):
    before: np.ndarray  # (S, S, 3) uint8, resized to data.image_size
    after: np.ndarray
    text: str
    happened: bool
    source: str  # VerifyPair.source


def verifier_samples_from_dataset(cfg, rng: np.random.Generator) -> tuple[list[VerifierSample], list[int], str]:
    """The verifier's samples of a LeRobot dataset and their episode index; a line on what the data lacks."""
    from finetune_embodied.datasets import open_dataset
    from finetune_embodied.labelling import apply_labels
    from finetune_embodied.record import load_step_kinds
    from finetune_embodied.sequences import verification_pairs
    from finetune_embodied.train.stages.lm_data import step_labels
    from finetune_embodied.train.stages.tokenizer_stage import announce_resize, camera_key
    from model_runtime.tokenizers import resize_image

    d = cfg.data
    reader = open_dataset(d.path, on_error=d.on_error, first_episodes=d.first_episodes)
    key = camera_key(reader.camera_keys, d.camera, d.path)
    announce_resize(reader, key, d.image_size)
    labels, label_line = step_labels(cfg, reader, key)  # episodes without step labels: found from the data, as the LM stages do
    kinds = load_step_kinds(d.path) if not labels else None
    notes = [label_line] if labels else []
    if kinds is None:
        notes.append(f"{d.path} has no step kinds (recorded without them): every labelled step counts as happened;"
                     " only part-way and other-step samples say no")
    samples: list[VerifierSample] = []
    groups: list[int] = []
    from tqdm import tqdm

    total = min(d.max_episodes or reader.num_episodes, reader.num_episodes)
    bar = tqdm(apply_labels(reader.iter_episodes(max_episodes=d.max_episodes), labels), total=total,
               desc="[data] episodes -> verifier samples", mininterval=10)
    for ep in bar:
        if ep.subtasks is None:
            raise ValueError(f"stage 'verifier': episode {ep.episode_index} of {d.path} has no step labels"
                             " (label.when: never; docs/datasets.md)")
        ep_kinds = None
        if kinds is not None:
            ep_kinds = kinds.get(ep.episode_index)
            if ep_kinds is None:
                raise ValueError(f"stage 'verifier': the step kinds of {d.path} do not list episode {ep.episode_index}")
        pairs = verification_pairs(ep, ep_kinds, rng)
        video = ep.images[key]
        needed = sorted({p.before_index for p in pairs} | {p.after_index for p in pairs})
        # copies: a view into the episode's video would keep the whole video alive
        frames = {i: np.array(resize_image(video[i], (d.image_size, d.image_size))) for i in needed}
        for p in pairs:
            samples.append(VerifierSample(frames[p.before_index], frames[p.after_index], p.step_text, p.happened, p.source))
            groups.append(ep.episode_index)
    if reader.report.count:
        notes.append(reader.report.summary())
    return samples, groups, "; ".join(notes)


class VerifierStage(Stage):
    name = "verifier"

    def __init__(self, cfg, info) -> None:
        super().__init__(cfg, info)
        if cfg.data.source != "dataset":
            raise ValueError("stage 'verifier' trains on a recording (data.source: dataset)")
        self.config = self._config([])  # the model.* overrides are checked before minutes of reading
        rng = np.random.default_rng(cfg.seed)
        samples, groups, self.data_report = verifier_samples_from_dataset(cfg, rng)
        if self.data_report:
            print(f"[data] {self.data_report}")
        if not samples:
            raise ValueError(f"stage 'verifier': no steps in {cfg.data.path}")
        self.train_set, self.eval_set = split_heldout(samples, groups, cfg.data.heldout_fraction)
        if not self.train_set:
            raise ValueError(f"stage 'verifier': no training samples in {cfg.data.path} (all held out)")
        from model_runtime.step_verifier import sentence_words, vocab_index

        self.config = dataclasses.replace(self.config, vocab=sorted({w for s in samples for w in sentence_words(s.text)}))
        self.vocab_index = vocab_index(self.config.vocab)
        n_pos = sum(s.happened for s in self.train_set)
        n_neg = len(self.train_set) - n_pos
        if not n_pos or not n_neg:
            raise ValueError(f"stage 'verifier': the training samples are all {'yes' if n_pos else 'no'}"
                             f" ({len(self.train_set)}); it needs steps that happened and steps that did not")
        self.pos_weight = n_neg / n_pos
        self.model: torch.nn.Module | None = None

    def _config(self, vocab: list[str]):
        """The network's config: ``model.*`` overrides on the defaults; the data sets vocab and image size."""
        from model_runtime.step_verifier import StepVerifierConfig

        overrides = dict(self.cfg.model)
        for key in ("vocab", "image_size"):
            if key in overrides:
                raise ValueError(f"model.{key} is set by the data (data.image_size; the recording's step sentences)")
        try:
            return StepVerifierConfig(vocab=vocab, image_size=self.cfg.data.image_size, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model (StepVerifierConfig): {exc}") from None

    def build_model(self) -> torch.nn.Module:
        from model_runtime.step_verifier import StepVerifierNet

        self.model = StepVerifierNet(self.config)
        return self.model

    def model_config(self) -> dict[str, Any]:
        return {"kind": "step_verifier", "verifier": self.config.to_dict()}

    def collate(self, samples: list[VerifierSample]) -> dict[str, Any]:
        """As the runtime's ``StepVerifier.p_happened`` prepares its inputs (images_to_tensor, batch_words)."""
        from model_runtime.step_verifier import batch_words, images_to_tensor

        size = self.config.image_size
        words, lengths = batch_words([s.text for s in samples], self.vocab_index, self.config.max_words)
        return {"before": images_to_tensor([s.before for s in samples], size),
                "after": images_to_tensor([s.after for s in samples], size), "words": words, "lengths": lengths,
                "happened": torch.tensor([float(s.happened) for s in samples])}

    def loss(self, model, batch, gen):
        logits = model(batch["before"], batch["after"], batch["words"], batch["lengths"])
        target = batch["happened"]
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(self.pos_weight))
        acc = float(((logits >= 0) == (target > 0.5)).float().mean())
        return loss, {"acc": acc}

    def evaluate(self, model) -> dict[str, float]:
        samples = self.eval_samples()
        if not samples:
            return {}
        threshold = self.config.threshold  # decided as the runtime decides
        probs = []
        bs = self.cfg.eval.batch_size
        for i in range(0, len(samples), bs):
            batch = {k: v.to(self.info.device) for k, v in self.collate(samples[i : i + bs]).items()}
            probs.append(torch.sigmoid(model(batch["before"], batch["after"], batch["words"], batch["lengths"])).cpu())
        p = torch.cat(probs).numpy()
        said = p >= threshold
        truth = np.array([s.happened for s in samples])
        src = np.array([s.source for s in samples])
        out = {"acc": float((said == truth).mean()), "samples": float(len(samples))}
        out["false_done"] = float(said[~truth].mean()) if (~truth).any() else float("nan")
        out["missed_done"] = float((~said[truth]).mean()) if truth.any() else float("nan")
        for name in ("step", "partway", "other step"):
            m = src == name
            if m.any():
                out[f"acc_{name.replace(' ', '_')}"] = float((said[m] == truth[m]).mean())
        return out

    def write_files(self, directory: Path) -> None:
        """A loadable step-verifier directory next to the checkpoint weights (what export copies)."""
        import copy

        from model_runtime.step_verifier import VERIFIER_DIR, StepVerifier

        if self.model is not None:
            StepVerifier(copy.deepcopy(self.model).cpu()).save(directory / VERIFIER_DIR)
