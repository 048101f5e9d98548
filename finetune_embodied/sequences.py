"""Episodes -> interleaved training samples for the guidance model.

Each sample is one assistant turn: ``instruction + current frame (+ steps already done)`` ->
``next step sentence + its keyframe image`` (the frame where that step ends), or the final "done"
answer. Samples start at every step boundary and also at frames sampled inside a step (the robot
is mid-way: the model must still name the step in progress), plus one final sample per episode.

Two layers:
- :func:`plan_episode` -> :class:`StepSample` list (frame indices and texts only, no tokens);
  :func:`verification_pairs` -> :class:`VerifyPair` list, the step verifier's samples (stage verifier);
- :class:`SequenceDataset` tokenises them with a vision tokenizer + text tokenizer through
  ``model_runtime.prompt.build_training_sequence`` (visual-token loss weight 0.5 by default, as Emu3.5),
  and :func:`collate_sequences` pads a batch (labels -100, loss weight 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from finetune_embodied.datasets.episode import Episode

__all__ = [
    "StepSample",
    "SequenceDataset",
    "collate_sequences",
    "dataset_texts",
    "verification_pairs",
    "episode_segments",
    "frame_cell_targets",
    "perception_object_classes",
    "plan_episode",
]


@dataclass(frozen=True)
class StepSample:
    """One untokenised training sample of an episode."""

    episode_index: int
    frame_index: int  # the current (conditioning) frame
    history: tuple[str, ...]  # steps already done, oldest first
    step_text: str | None  # the next step; None for the final sample
    keyframe_index: int | None  # frame at the end of that step (its subgoal image); None when final
    is_final: bool
    mid_step: bool  # True: sampled inside a step, not at its first frame
    unconfirmed: bool = False  # a post-step frame whose history does not hold that step yet
    rest: tuple[str, ...] = ()  # boundary samples: the steps still to do, this one first


@dataclass(frozen=True)
class VerifyPair:
    """One step-verifier sample: did ``step_text`` happen between frames ``before_index`` and ``after_index``?"""

    episode_index: int
    before_index: int
    after_index: int
    step_text: str
    happened: bool
    source: str  # "step" (a recorded attempt), "partway" (stopped inside it), "other step" (another step's sentence)


# What each recorded frame belongs to (``emu-guide record`` stores one per frame): a plan step that
# reached its goal, a plan step's attempt that did not (the item slipped), an injected mistake (a
# wrong item, a missed grasp) or the recovery from one.
STEP_KINDS = ("plan", "failed", "mistake", "recovery")


def episode_segments(ep: Episode, keyframes: Sequence[int] | None = None,
                     step_texts: Sequence[str] | None = None) -> list[tuple[str, int, int]]:
    """(step text, first frame, last frame) per step.

    From the episode's subtask labels, or - for unlabeled data - from ``keyframes`` (the frame where
    each step ends, e.g. from :mod:`finetune_embodied.keyframes`) with one ``step_texts`` entry each.
    """
    if keyframes is None:
        if ep.subtasks is None:
            raise ValueError(
                f"episode {ep.episode_index} has no subtask labels: pass keyframes and step_texts "
                "(finetune_embodied.keyframes.detect_keyframes finds the step ends)"
            )
        return ep.subtask_segments()
    ks = [int(k) for k in keyframes]
    if step_texts is None or len(step_texts) != len(ks):
        raise ValueError(f"need one step text per keyframe: {len(ks)} keyframes, step_texts={step_texts!r}")
    if ks != sorted(set(ks)) or not ks or ks[0] < 0 or ks[-1] >= ep.length:
        raise ValueError(f"keyframes must be strictly increasing frame indices in 0..{ep.length - 1}, got {ks}")
    segs, start = [], 0
    for text, end in zip(step_texts, ks):
        segs.append((str(text), start, end))
        start = end + 1
    return segs


def plan_episode(
    ep: Episode,
    mid_samples_per_step: int = 2,
    rng: np.random.Generator | None = None,
    max_history: int | None = None,
    keyframes: Sequence[int] | None = None,
    step_texts: Sequence[str] | None = None,
    unconfirmed: bool = False,
    kinds: Sequence[str] | None = None,
) -> list[StepSample]:
    """The samples of one episode: per step one at its boundary (the last frame of the previous step,
    where that one is complete; frame 0 for the first step) plus ``mid_samples_per_step`` frames drawn
    inside it (without replacement, never the step's last frame: there the step is already done),
    then the final "done" sample on the last frame.

    ``kinds`` (one of STEP_KINDS per frame, as ``emu-guide record`` stores them; None: every step is
    a plan step) keeps the recorder's injected mistakes out of the targets and the histories, as the
    guidance loop would have them: a mistake is never a step to say (at its start the answer is the
    plan step it displaced) and never confirmed; a failed attempt is the right step to say, its
    subgoal the outcome of the attempt that succeeds, and it is not confirmed; a recovery is a step
    to say after the mistake, and confirmed.

    ``unconfirmed``: each boundary after a confirmed step (and the final frame) also gets a sample
    whose history does not hold that step yet: what the guidance loop's verifier asks about the frame
    after executing a step. Its target is the same, so the answer (a perception first) must come
    from the frame: a history that lists every finished step would otherwise tell the model what
    the frame shows (the FoldCloth parts still to fold follow from the steps done)."""
    if mid_samples_per_step < 0:
        raise ValueError(f"mid_samples_per_step must be >= 0, got {mid_samples_per_step}")
    rng = rng if rng is not None else np.random.default_rng(0)
    segs, seg_kinds, targets = _segments_and_targets(ep, keyframes, step_texts, kinds)
    plan_steps = [i for i, k in enumerate(seg_kinds) if k == "plan"]
    out: list[StepSample] = []
    done: list[str] = []
    confirmed_last = False  # the previous segment's step went into the history
    prev_end = 0
    for i, (_, first, last) in enumerate(segs):
        t = targets[i]
        if t is not None:
            text, keyframe = segs[t][0], segs[t][2]
            rest = (text, *(segs[j][0] for j in plan_steps if j > t))
            hist = _recent(done, max_history)
            # Boundary sample: the frame where the previous step was just completed (what the guidance
            # loop sees after executing it), or frame 0 for the first step.
            out.append(StepSample(ep.episode_index, prev_end, hist, text, keyframe, False, False, rest=rest))
            if unconfirmed and confirmed_last:
                out.append(StepSample(ep.episode_index, prev_end, _recent(done[:-1], max_history), text, keyframe,
                                      False, False, unconfirmed=True))
            inside = np.arange(max(first, prev_end + 1), last)  # in progress: started, not yet done
            if len(inside) and mid_samples_per_step and seg_kinds[i] != "mistake":
                picks = rng.choice(inside, size=min(mid_samples_per_step, len(inside)), replace=False)
                for f in sorted(int(p) for p in picks):
                    out.append(StepSample(ep.episode_index, f, hist, text, keyframe, False, True))
        confirmed_last = seg_kinds[i] in ("plan", "recovery")
        if confirmed_last:
            done.append(segs[i][0])
        prev_end = last
    out.append(StepSample(ep.episode_index, ep.length - 1, _recent(done, max_history), None, None, True, False))
    if unconfirmed and confirmed_last:
        out.append(StepSample(ep.episode_index, ep.length - 1, _recent(done[:-1], max_history), None, None, True, False,
                              unconfirmed=True))
    return out


def _segments_and_targets(ep: Episode, keyframes: Sequence[int] | None, step_texts: Sequence[str] | None,
                          kinds: Sequence[str] | None) -> tuple[list[tuple[str, int, int]], list[str], list[int | None]]:
    """(segments, each segment's step kind, each segment's target): the segment whose step the loop
    says at its start: its own, but for a mistake the next plan step (the one it displaced), for a
    failed attempt the same step's attempt that succeeds (its end is the subgoal); None when none follows."""
    segs = episode_segments(ep, keyframes, step_texts)
    if kinds is not None:
        if len(kinds) != ep.length:
            raise ValueError(f"episode {ep.episode_index}: step kinds for {len(kinds)} frames, the episode has {ep.length}")
        unknown = sorted(set(kinds) - set(STEP_KINDS))
        if unknown:
            raise ValueError(f"episode {ep.episode_index}: unknown step kinds {unknown} (known: {', '.join(STEP_KINDS)})")
    seg_kinds = [kinds[last] if kinds is not None else "plan" for _, _, last in segs]
    plan_steps = [i for i, k in enumerate(seg_kinds) if k == "plan"]
    targets: list[int | None] = []
    for i, k in enumerate(seg_kinds):
        if k in ("plan", "recovery"):
            targets.append(i)
            continue
        later = [j for j in plan_steps if j > i and (k == "mistake" or segs[j][0] == segs[i][0])]
        targets.append(later[0] if later else None)
    return segs, seg_kinds, targets


def verification_pairs(ep: Episode, kinds: Sequence[str] | None = None, rng: np.random.Generator | None = None,
                       keyframes: Sequence[int] | None = None, step_texts: Sequence[str] | None = None) -> list[VerifyPair]:
    """The step verifier's samples of one episode: per step the loop said (``plan_episode``'s target),
    from the frame it was planned on (the previous segment's end) to

    - the segment's end: it happened for a plan step or a recovery; not for a failed attempt (the
      item slipped) nor for the plan step an injected mistake displaced (a wrong item, a miss);
    - a frame in the first third of the segment (an executor that stopped part way): not yet;

    and, for a step that happened, the same two frames asked about other steps of the episode's
    plan (different sentences): not what happened. One of them starts with the same word (the same
    verb on another object: the near miss a wrong pick looks like), one is any other sentence.
    ``rng`` draws the partway frame and the other sentences (default seed 0)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    segs, seg_kinds, targets = _segments_and_targets(ep, keyframes, step_texts, kinds)
    texts = sorted({segs[t][0] for t in targets if t is not None})
    out: list[VerifyPair] = []
    prev_end = 0
    for i, (_, first, last) in enumerate(segs):
        t = targets[i]
        if t is not None and last > prev_end:
            text = segs[t][0]
            happened = seg_kinds[i] in ("plan", "recovery")
            out.append(VerifyPair(ep.episode_index, prev_end, last, text, happened, "step"))
            early = np.arange(max(first, prev_end + 1), prev_end + 1 + max(1, (last - prev_end) // 3))
            if len(early):
                out.append(VerifyPair(ep.episode_index, prev_end, int(rng.choice(early)), text, False, "partway"))
            others = [x for x in texts if x != text]
            if happened and others:
                same_verb = [x for x in others if x.split()[:1] == text.split()[:1]]
                asked = {str(rng.choice(same_verb))} if same_verb else set()
                rest = [x for x in others if x not in asked]
                if rest:
                    asked.add(str(rng.choice(rest)))
                out += [VerifyPair(ep.episode_index, prev_end, last, x, False, "other step") for x in sorted(asked)]
        prev_end = last
    return out


def _recent(done: list[str], max_history: int | None) -> tuple[str, ...]:
    """The last ``max_history`` done steps (all when None)."""
    if max_history is None:
        return tuple(done)
    return tuple(done[-max_history:]) if max_history > 0 else ()



def dataset_texts(episodes: Iterable[Episode]) -> list[str]:
    """Every instruction and step text (to build a word tokenizer's vocabulary before tokenising)."""
    texts: list[str] = []
    for ep in episodes:
        texts.append(ep.task)
        if ep.subtasks is not None:
            texts += [s for s, _, _ in ep.subtask_segments()]
    return texts


def perception_object_classes(texts: Iterable[str]) -> list[str]:
    """The sorted object names of perception texts: class k + 1 of :func:`frame_cell_targets` is names[k]."""
    from model_runtime.prompt import parse_perception

    return sorted({o["name"] for t in texts for o in parse_perception(t)["objects"]})


def frame_cell_targets(text: str, pixels: Sequence[Sequence[float]], classes: Sequence[str],
                       grid: tuple[int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """(grid_h * grid_w,) int64 per image token of a frame: 1 + the class of the object whose centre
    pixel lies in that token's cell, 0 where none does (row-major, the image's token order).

    ``text`` is the frame's perception (its objects in order), ``pixels`` their [u, v] centres in a
    frame of ``frame_size`` (height, width) pixels, then the held object's when the perception holds
    one and the recording has its pixel (recordings from before session 11 have none: the held
    object's cell then reads as empty, which taught the codes to hide what the gripper holds).
    A listed object keeps its cell over the held one. Training-only targets of ``perception_aux``
    and of the tokenizer's ``semantic_aux``.
    """
    from model_runtime.prompt import parse_perception

    parsed = parse_perception(text)
    objects, held, held_pixel = parsed["objects"], parsed["holding"], None
    if held is not None and len(pixels) == len(objects) + 1:
        pixels, held_pixel = pixels[:-1], pixels[-1]
    elif len(objects) != len(pixels):
        raise ValueError(f"perception lists {len(objects)} objects but has {len(pixels)} pixels: {text!r}")
    index = {name: i + 1 for i, name in enumerate(classes)}
    gh, gw = grid
    fh, fw = frame_size
    out = np.zeros(gh * gw, dtype=np.int64)

    def cell(u: float, v: float) -> int:
        return min(max(int(gh * float(v) / fh), 0), gh - 1) * gw + min(max(int(gw * float(u) / fw), 0), gw - 1)

    for obj, (u, v) in zip(objects, pixels):
        if obj["name"] not in index:
            raise ValueError(f"object {obj['name']!r} is not among the {len(classes)} perception classes")
        out[cell(u, v)] = index[obj["name"]]
    if held_pixel is not None and held in index and not out[cell(*held_pixel)]:  # a class the data names
        out[cell(*held_pixel)] = index[held]
    return out


class SequenceDataset:
    """A map-style torch Dataset of ``TrainingSequence`` built from episodes.

    ``perceptions`` (episode_index -> perception text per frame, ``finetune_embodied.record.load_perceptions``)
    selects the "perceive" answer format: each guidance answer starts with its frame's perception.
    With ``perception_pixels`` (episode_index -> per frame the listed objects' [u, v]) and
    ``object_classes`` each guidance sequence also carries ``frame_cells`` (:func:`frame_cell_targets`
    of its prompt frame), the targets of the training-only ``perception_aux`` loss.
    ``step_kinds`` (episode_index -> per frame one of STEP_KINDS, ``finetune_embodied.record.load_step_kinds``)
    keeps the recorder's injected mistakes out of targets and histories (:func:`plan_episode`).
    ``plan_sequences`` adds, per step boundary, the auxiliary rest-of-plan sequence of
    ``model_runtime.prompt.build_plan_sequence`` (its ``kind`` is "plan"; evaluation skips it).
    Frames are resized to the vision tokenizer's image size and encoded once per episode (only the
    frames some sample uses). ``samples[i]`` tells which episode/frame/step sequence ``i`` came from.
    """

    def __init__(
        self,
        episodes: Iterable[Episode],
        layout,  # model_runtime.layout.TokenLayout
        text_tok,  # model_runtime.text_tokenizer.TextTokenizer
        vision_tok,  # model_runtime.tokenizers.base.VisionTokenizer
        camera_key: str | None = None,
        visual_loss_weight: float = 0.5,
        mid_samples_per_step: int = 2,
        max_history: int | None = None,
        seed: int = 0,
        task: str = "vla",
        plan_sequences: bool = False,
        unconfirmed_samples: bool = False,
        perceptions: dict[int, list[str]] | None = None,
        perception_pixels: dict[int, list] | None = None,
        object_classes: Sequence[str] | None = None,
        step_kinds: dict[int, list[str]] | None = None,
    ) -> None:
        from model_runtime.prompt import build_plan_sequence, build_training_sequence

        if not visual_loss_weight >= 0:
            raise ValueError(f"visual_loss_weight must be >= 0, got {visual_loss_weight}")
        if perception_pixels is not None and (perceptions is None or object_classes is None):
            raise ValueError("perception_pixels needs perceptions and object_classes (the probe's targets)")
        rng = np.random.default_rng(seed)
        self.layout = layout
        self.samples: list[StepSample] = []
        self.sequences = []
        for ep in episodes:
            key = camera_key or (ep.camera_keys[0] if ep.camera_keys else None)
            if key is None or key not in ep.images:
                raise ValueError(f"episode {ep.episode_index}: no camera {camera_key!r} (has {ep.camera_keys})")
            kinds = None
            if step_kinds is not None:
                kinds = step_kinds.get(ep.episode_index)
                if kinds is None:
                    raise ValueError(f"episode {ep.episode_index}: the recording's step kinds do not list it")
            plan = plan_episode(ep, mid_samples_per_step, rng, max_history, unconfirmed=unconfirmed_samples, kinds=kinds)
            seen = None
            if perceptions is not None:
                seen = perceptions.get(ep.episode_index)
                if seen is None or len(seen) != ep.length:
                    raise ValueError(f"episode {ep.episode_index}: perception targets for "
                                     f"{'no' if seen is None else len(seen)} frames, the episode has {ep.length}")
            pixels = None
            if perception_pixels is not None and seen is not None:
                pixels = perception_pixels.get(ep.episode_index)
                if pixels is None or len(pixels) != ep.length:
                    raise ValueError(f"episode {ep.episode_index}: object pixels for "
                                     f"{'no' if pixels is None else len(pixels)} frames, the episode has {ep.length}")
            needed = sorted({s.frame_index for s in plan} | {s.keyframe_index for s in plan if s.keyframe_index is not None})
            codes = dict(zip(needed, self._encode(vision_tok, ep.images[key][needed])))
            for s in plan:
                seq = build_training_sequence(
                    layout, text_tok, ep.task, list(s.history), codes[s.frame_index], s.step_text,
                    None if s.is_final else codes[s.keyframe_index], s.is_final,
                    visual_loss_weight=visual_loss_weight, task=task,
                    perception=None if seen is None else seen[s.frame_index],
                )
                if pixels is not None:
                    grid = codes[s.frame_index].shape
                    seq.frame_cells = frame_cell_targets(seen[s.frame_index], pixels[s.frame_index], object_classes,
                                                         grid, ep.images[key].shape[1:3])
                self.samples.append(s)
                self.sequences.append(seq)
            if plan_sequences:  # one rest-of-plan answer per step boundary (see build_plan_sequence)
                for s in plan:
                    if not s.rest:
                        continue
                    seq = build_plan_sequence(layout, text_tok, ep.task, list(s.history), codes[s.frame_index],
                                              list(s.rest), task=task)
                    self.samples.append(s)
                    self.sequences.append(seq)
        if not self.sequences:
            raise ValueError("SequenceDataset: no episodes given")

    @staticmethod
    def _encode(vision_tok, frames: np.ndarray) -> np.ndarray:
        from model_runtime.tokenizers.base import resize_image

        size = vision_tok.image_size
        if size is not None:
            frames = np.stack([resize_image(f, size) for f in frames])
        return np.asarray(vision_tok.encode(frames))

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int):
        return self.sequences[i]


def collate_sequences(batch: list, pad_id: int) -> dict:
    """Right-pad ``TrainingSequence``s into tensors: input_ids (PAD), labels (-100), loss_weights (0),
    attention_mask (0 on padding), prompt_lengths; image spans are kept per row."""
    import torch

    from model_runtime.prompt import IGNORE_INDEX

    if not batch:
        raise ValueError("collate_sequences: empty batch")
    t = max(len(s) for s in batch)
    b = len(batch)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    weights = torch.zeros((b, t), dtype=torch.float32)
    attn = torch.zeros((b, t), dtype=torch.long)
    for r, s in enumerate(batch):
        n = len(s)
        ids[r, :n] = torch.from_numpy(s.input_ids)
        labels[r, :n] = torch.from_numpy(s.labels)
        weights[r, :n] = torch.from_numpy(s.loss_weights)
        attn[r, :n] = 1
    return {
        "input_ids": ids,  # (B, T)
        "labels": labels,  # (B, T)
        "loss_weights": weights,  # (B, T)
        "attention_mask": attn,  # (B, T)
        "prompt_lengths": torch.tensor([s.prompt_length for s in batch]),  # (B,)
        "image_spans": [s.image_spans for s in batch],
    }
