"""Training configuration: plain dataclasses checked in ``__post_init__``, read from YAML or JSON.

One ``TrainConfig`` drives the one training loop; ``stage`` picks what is trained:

- ``tokenizer``: the vision tokenizer (reconstruction + quantisation losses) on camera frames.
- ``next_token``: the language model on interleaved text + image-token sequences.
- ``dida``: DiDA adaptation of a next-token model (noisy image copies + the next-token loss).
- ``verifier``: the step verifier (did a step happen between two frames?) on a recording.
- ``perception``: the scene perceiver (what is on the table, where, what is held) on a recording.

Configs are data, never code: files are parsed with ``yaml.safe_load`` / ``json.load`` and
command-line overrides (``optim.lr=1e-3``) are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("tokenizer", "next_token", "dida", "verifier", "perception")
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
DATA_SOURCES = ("dataset", "synthetic")
LAYOUTS = ("compact", "emu35")


class ConfigError(ValueError):
    """A training config is invalid; the message names the field and quotes the bad value."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 20  # linear warm-up from 0 to lr
    schedule: str = "cosine"  # "cosine" (down to min_lr_ratio * lr) or "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    batch_size: int = 8  # samples per process per optimizer step
    max_steps: int = 1000  # optimizer steps in total (a resumed run continues to this)

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr!r}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"optim betas must be in [0, 1), got {self.beta1!r}, {self.beta2!r}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        _check(self.schedule in ("cosine", "constant"), f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        _check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip!r}")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, f"optim.batch_size must be an int >= 1, got {self.batch_size!r}")
        _check(isinstance(self.max_steps, int) and self.max_steps >= 1, f"optim.max_steps must be an int >= 1, got {self.max_steps!r}")


@dataclass
class DataConfig:
    source: str = "dataset"  # "dataset" (a LeRobot v3.x or v2.x directory) or "synthetic" (generated, for smoke tests)
    path: str = ""  # dataset directory (source == "dataset")
    camera: str = ""  # camera to read frames from (full key or short name); "" = the only one (several: an error)
    heldout_fraction: float = 0.1  # episodes kept out of training for evaluation (split by episode)
    image_size: int = 96  # frames are resized to image_size x image_size (non-square ones stretched, as at runtime; said in the log)
    visual_loss_weight: float = 0.5  # loss weight of visual tokens vs text (Emu3.5 used 0.5)
    object_loss_weight: float = 0.0  # tokenizer stage: pixels that stand out from the table weigh 1 + this
    max_seq_len: int = 1024  # longer sequences raise an error (never silently truncated)
    frames_per_episode: int = 0  # tokenizer stage: frames sampled per episode (0 = all)
    max_episodes: int = 0  # tokenizer and verifier stages: read this many episodes, evenly spaced (0 = all)
    # every stage: read only the recording's first N episodes, in index order (0 = all). A pipeline
    # recipe's stages before its refine stages see the part recorded for them (configs/train/default_model.yaml)
    first_episodes: int = 0
    mid_samples_per_step: int = 2  # LM stages: frames sampled inside each step besides its boundary frame
    # perception stage: the cells within this many cells of an object's centre cell also learn its name
    # (the nearest centre's), so a neighbour cell that fires names the same object (0 = the centre cell only)
    name_radius: int = 0
    # perception stage with a name reader (model.name_crop): crops its loss reads per step, drawn
    # from the named cells; names_only: train the reader alone, the rest loaded by init_from and frozen
    reader_crops: int = 256
    names_only: bool = False
    num_synthetic: int = 64  # synthetic source: number of samples
    max_history: int = 4  # sequences: most recent done steps kept in the prompt
    plan_sequences: bool = False  # LM stages: also train the rest-of-plan task (model_runtime.prompt.build_plan_sequence)
    # LM stages: per step boundary also a sample whose history lacks the step just done (the frame the
    # loop's verifier perceives before confirming it): the answer must come from the frame, not the history
    unconfirmed_samples: bool = False
    # LM stages: which sequence kinds train ("step": next step + subgoal image; "plan": rest of the
    # plan, text only). ["plan"] alone is the reading warm-up (configs/train/reading.yaml).
    # Evaluation uses held-out "step" sequences.
    train_kinds: list[str] = field(default_factory=lambda: ["step", "plan"])
    # LM stages: the answer format ("step": step + subgoal image; "perceive": what the frame shows
    # first, from the recording's perception targets, model_runtime.prompt.format_perception)
    answer: str = "step"
    extra_texts: list[str] = field(default_factory=list)  # more texts for the word vocabulary (e.g. all instruction paraphrases)
    on_error: str = "raise"  # bad episodes: "raise" (error naming file + episode) or "skip" (counted, reported)
    # LM stages with init_from: words of the data the trained vocabulary lacks are an "error" (named),
    # or "extend" it (appended; their rows start at the mean word row, finetune_embodied/train/vocabulary.py)
    new_words: str = "error"
    synthetic_grid: int = 4  # synthetic LM data: subgoal images are grid x grid codes
    synthetic_codes: int = 64  # synthetic LM data: visual codebook size

    def __post_init__(self) -> None:
        _check(self.source in DATA_SOURCES, f"data.source must be one of {DATA_SOURCES}, got {self.source!r}")
        _check(self.source != "dataset" or bool(self.path), "data.path is required when data.source is 'dataset'")
        _check(0 <= self.heldout_fraction < 1, f"data.heldout_fraction must be in [0, 1), got {self.heldout_fraction!r}")
        _check(isinstance(self.image_size, int) and self.image_size >= 8, f"data.image_size must be an int >= 8, got {self.image_size!r}")
        _check(self.visual_loss_weight >= 0, f"data.visual_loss_weight must be >= 0, got {self.visual_loss_weight!r}")
        _check(self.object_loss_weight >= 0, f"data.object_loss_weight must be >= 0, got {self.object_loss_weight!r}")
        _check(self.max_seq_len >= 8, f"data.max_seq_len must be >= 8, got {self.max_seq_len!r}")
        _check(self.max_episodes >= 0, f"data.max_episodes must be >= 0, got {self.max_episodes!r}")
        _check(isinstance(self.first_episodes, int) and self.first_episodes >= 0,
               f"data.first_episodes must be an int >= 0, got {self.first_episodes!r}")
        _check(self.mid_samples_per_step >= 0, f"data.mid_samples_per_step must be >= 0, got {self.mid_samples_per_step!r}")
        _check(isinstance(self.name_radius, int) and not isinstance(self.name_radius, bool) and 0 <= self.name_radius <= 3,
               f"data.name_radius must be an int in [0, 3], got {self.name_radius!r}")
        _check(isinstance(self.reader_crops, int) and not isinstance(self.reader_crops, bool) and self.reader_crops >= 1,
               f"data.reader_crops must be an int >= 1, got {self.reader_crops!r}")
        _check(isinstance(self.names_only, bool), f"data.names_only must be true or false, got {self.names_only!r}")
        _check(self.frames_per_episode >= 0, f"data.frames_per_episode must be >= 0, got {self.frames_per_episode!r}")
        _check(self.num_synthetic >= 2, f"data.num_synthetic must be >= 2, got {self.num_synthetic!r}")
        _check(self.max_history >= 0, f"data.max_history must be >= 0, got {self.max_history!r}")
        _check(isinstance(self.extra_texts, list) and all(isinstance(t, str) for t in self.extra_texts),
               f"data.extra_texts must be a list of strings, got {self.extra_texts!r}")
        _check(isinstance(self.train_kinds, list) and bool(self.train_kinds) and set(self.train_kinds) <= {"step", "plan"},
               f"data.train_kinds must be a non-empty list of 'step' and/or 'plan', got {self.train_kinds!r}")
        _check(self.plan_sequences or "step" in self.train_kinds,
               f"data.train_kinds {self.train_kinds!r} trains plan sequences only; set data.plan_sequences: true")
        _check(self.answer in ("step", "perceive"), f"data.answer must be 'step' or 'perceive', got {self.answer!r}")
        _check(self.on_error in ("raise", "skip"), f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")
        _check(self.new_words in ("error", "extend"), f"data.new_words must be 'error' or 'extend', got {self.new_words!r}")
        _check(self.synthetic_grid >= 1, f"data.synthetic_grid must be >= 1, got {self.synthetic_grid!r}")
        _check(self.synthetic_codes >= 2, f"data.synthetic_codes must be >= 2, got {self.synthetic_codes!r}")


@dataclass
class CheckpointConfig:
    dir: str = ""  # run directory ("" = runs/train/<name>); checkpoints go to <dir>/checkpoints
    every: int = 200  # save every N optimizer steps (and always at the end)
    keep_last: int = 3  # older checkpoints are deleted
    resume: str = "auto"  # "auto" (latest in dir if any), "never" (start over: old checkpoints removed), or a path

    def __post_init__(self) -> None:
        _check(self.every >= 1, f"checkpoint.every must be >= 1, got {self.every!r}")
        _check(self.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {self.keep_last!r}")
        _check(bool(self.resume), "checkpoint.resume must be 'auto', 'never' or a path, got ''")


@dataclass
class EvalConfig:
    every: int = 200  # evaluate on held-out data every N steps (and at the end); 0 = only at the end
    max_samples: int = 32  # held-out samples per evaluation
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check(self.every >= 0, f"eval.every must be >= 0, got {self.every!r}")
        _check(self.max_samples >= 1, f"eval.max_samples must be >= 1, got {self.max_samples!r}")
        _check(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size!r}")


@dataclass
class LoraConfig:
    enabled: bool = False  # LoRA adapters (peft) instead of full fine-tuning, for large models
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"lora.r must be >= 1, got {self.r!r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha!r}")
        _check(0 <= self.dropout < 1, f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        _check(bool(self.target_modules), "lora.target_modules must not be empty")


@dataclass
class DidaConfig:
    noise: str = "mask"  # noisy-copy initialisation: "mask" (absorbing) or "uniform" (random codes)
    noisy_loss_weight: float = 1.0  # weight of the loss on the noisy image copy
    next_token_loss_weight: float = 1.0  # weight of the ordinary next-token loss (keeps text from drifting)

    def __post_init__(self) -> None:
        _check(self.noise in ("mask", "uniform"), f"dida.noise must be 'mask' or 'uniform', got {self.noise!r}")
        _check(self.noisy_loss_weight >= 0, f"dida.noisy_loss_weight must be >= 0, got {self.noisy_loss_weight!r}")
        _check(self.next_token_loss_weight >= 0, f"dida.next_token_loss_weight must be >= 0, got {self.next_token_loss_weight!r}")
        _check(self.noisy_loss_weight + self.next_token_loss_weight > 0, "dida: at least one loss weight must be > 0")


LABEL_WHEN = ("missing", "always", "never")
LABEL_CUES = ("gripper", "motion", "image")


@dataclass
class LabelConfig:
    """Step labels for episodes without them (finetune_embodied.labelling; docs/datasets.md).

    Keyframes (step ends) come from the first cue in ``cues`` that the episode has: gripper
    open/close changes (a state column named like gripper/finger/claw/jaw, or ``gripper``), pauses
    of the end-effector (``position``: x, y, z columns) or joints (``joints``), then pauses of
    image change. The step text of step i of n is ``step_text`` filled in.
    """

    when: str = "missing"  # "missing": label episodes without subtask labels; "always": relabel all; "never": refuse
    cues: list[str] = field(default_factory=lambda: list(LABEL_CUES))  # which cues may be used, in this order
    gripper: str = ""  # state column (name or index) of the gripper; "" = found by name; "none" = no gripper
    position: list[str] = field(default_factory=list)  # 3 state columns of the end-effector xyz; [] = found by name
    joints: list[str] = field(default_factory=list)  # state columns whose pauses end steps when no xyz; [] = by name
    gripper_closed: str = "high"  # which end of the gripper column's range is closed ("low" for finger-opening readings)
    events: list[str] = field(default_factory=lambda: ["grasp", "release"])  # gripper changes that end a step
    step_text: str = "{task}: step {i} of {n}"  # fields {task}, {i}, {n}, {event} (grasp/release/pause/end)
    rest_frac: float = 0.05  # at rest = speed below this fraction of the episode's top speed
    min_pause: int = 2  # frames at rest that make a pause (motion and image cues)
    min_gap: int = 3  # keyframes closer than this (frames) merge, keeping the later one

    def __post_init__(self) -> None:
        _check(self.when in LABEL_WHEN, f"label.when must be one of {LABEL_WHEN}, got {self.when!r}")
        _check(isinstance(self.cues, list) and bool(self.cues) and set(self.cues) <= set(LABEL_CUES),
               f"label.cues must be a non-empty list of {LABEL_CUES}, got {self.cues!r}")
        for key in ("position", "joints"):
            v = getattr(self, key)
            _check(isinstance(v, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v),
                   f"label.{key} must be a list of state column names or indices, got {v!r}")
        _check(self.gripper_closed in ("high", "low"), f"label.gripper_closed must be 'high' or 'low', got {self.gripper_closed!r}")
        _check(isinstance(self.events, list) and bool(self.events) and set(self.events) <= {"grasp", "release"},
               f"label.events must be a non-empty list of 'grasp' and/or 'release', got {self.events!r}")
        _check(not self.position or len(self.position) == 3,
               f"label.position must name 3 columns (x, y, z), got {self.position!r}")
        _check("{i}" in self.step_text,
               f"label.step_text {self.step_text!r} must contain {{i}}: consecutive steps need "
               "different texts, else they merge into one")
        try:
            self.step_text.format(task="t", i=1, n=2, event="grasp")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"label.step_text {self.step_text!r}: fields are {{task}} {{i}} {{n}} {{event}} ({exc})") from None
        _check(0 < self.rest_frac < 1, f"label.rest_frac must be in (0, 1), got {self.rest_frac!r}")
        _check(self.min_pause >= 1, f"label.min_pause must be >= 1, got {self.min_pause!r}")
        _check(self.min_gap >= 0, f"label.min_gap must be >= 0, got {self.min_gap!r}")


@dataclass
class PerceptionAuxConfig:
    """A training-only probe that teaches the LM's image-token states what the frame shows.

    Per prompt-frame token, two linear heads on the hidden state after ``layer`` blocks predict the
    object centred in that token (class of its name, or none; the recording's object pixels,
    ``finetune_embodied.sequences.frame_cell_targets``) and the token's coarse cell (left/middle/
    right x back/front). 144 labels per frame where the perception text gives a few words: a dense
    reading signal. The heads are dropped at export (the model stays a plain Qwen3). Needs
    ``data.answer: perceive`` and a recording with object pixels.
    """

    weight: float = 0.0  # 0 = off; else added to the loss as weight * (object CE + cell CE)
    layer: int = 2  # hidden state after this many transformer blocks (1..num_layers)
    object_weight: float = 10.0  # CE weight of tokens with an object centred in them (none = 1)

    def __post_init__(self) -> None:
        _check(isinstance(self.weight, (int, float)) and self.weight >= 0,
               f"perception_aux.weight must be a number >= 0, got {self.weight!r}")
        _check(isinstance(self.layer, int) and self.layer >= 1, f"perception_aux.layer must be an int >= 1, got {self.layer!r}")
        _check(isinstance(self.object_weight, (int, float)) and self.object_weight > 0,
               f"perception_aux.object_weight must be a number > 0, got {self.object_weight!r}")


@dataclass
class SemanticAuxConfig:
    """A training-only head that teaches the vision tokenizer's codes what they show (stage tokenizer).

    Emu3.5 distils semantic features into its tokenizer so that its codes carry meaning; here the
    teacher is the simulator's ground truth. Per token of the 12x12 grid, a small MLP on the
    *quantised* latent (the token's d FSQ levels, straight-through) names the object centred in that
    token (class of its full name, e.g. "red cup", or none; the recording's object pixels,
    ``finetune_embodied.sequences.frame_cell_targets``). Its gradient reaches the encoder through
    FSQ's rounding, so the encoder learns to put identity into the code. A linear head could not
    separate ~80 classes from 4 numbers, hence the MLP. The head is dropped when the tokenizer is
    saved. Needs a recording with object pixels (``emu-guide record``).
    """

    weight: float = 0.0  # 0 = off; else the loss is reconstruction + weight * object CE
    object_weight: float = 10.0  # CE weight of tokens with an object centred in them (none = 1)
    hidden: int = 256  # width of the head's two hidden layers

    def __post_init__(self) -> None:
        _check(isinstance(self.weight, (int, float)) and not isinstance(self.weight, bool) and self.weight >= 0,
               f"semantic_aux.weight must be a number >= 0, got {self.weight!r}")
        _check(isinstance(self.object_weight, (int, float)) and not isinstance(self.object_weight, bool)
               and self.object_weight > 0, f"semantic_aux.object_weight must be a number > 0, got {self.object_weight!r}")
        _check(isinstance(self.hidden, int) and not isinstance(self.hidden, bool) and self.hidden >= 1,
               f"semantic_aux.hidden must be an int >= 1, got {self.hidden!r}")


VISUAL_CODES = ("table", "factorized", "digits")


@dataclass
class TrainConfig:
    stage: str = "next_token"  # "tokenizer", "next_token", "dida", "verifier" or "perception"
    name: str = "run"  # run name (default run directory runs/train/<name>)
    seed: int = 0  # seeds weights, data order and noise; a resumed run replays the same streams
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32", "bf16" (CUDA only)
    distributed: str = "auto"  # "auto" (DDP when launched by torchrun), "none", "ddp", "fsdp" (large models, CUDA)
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the stage's model config (width, layers...)
    init_from: str = ""  # checkpoint (directory) of a previous stage to start from
    tokenizer: str = ""  # LM stages: vision tokenizer checkpoint (directory) used to encode frames
    # LM stages: the token layout. "compact": our word vocabulary + FSQ codes. "emu35": init_from is
    # an Emu3.5 release-format checkpoint (config.json model_type "Emu3"); text is encoded by its own
    # tokenizer (text_tokenizer), frames by its IBQ vision tokenizer (tokenizer; "" = found beside
    # init_from, as released: weights/Emu3.5-VisionTokenizer) at data.image_size (finetune_embodied/train/stages/release.py).
    layout: str = "compact"
    text_tokenizer: str = ""  # layout emu35: the release's text tokenizer directory (src/tokenizer_emu3_ibq); "" = init_from
    trust_remote_code: bool = False  # layout emu35: let that tokenizer's own code (tokenization_emu3.py) run in this process
    visual_embedding_init: str = "random"  # LM stages from scratch: "random" or "tokenizer" (rows start from what each code looks like)
    # LM stages from scratch: std of the input embedding at init (0 = the model's initializer_range,
    # 0.02). On the reading probe the default LM learned to name objects in the frame at 1.0
    # (nn.Embedding's default) and never at 0.02 (bench/reading_probe.py --lm-init,
    # docs/training.md). Needs an untied head.
    input_embedding_init_std: float = 0.0
    # LM stages: how visual-code rows of the embedding table are parametrised while training.
    # "table": one free row per code. "factorized": per-FSQ-channel digit embeddings summed, plus a
    # per-code residual. "digits": the digit sums alone. Exports are plain Qwen3 tables either way
    # (finetune_embodied/train/factorized_codes.py).
    visual_codes: str = "table"
    log_every: int = 10  # metrics.jsonl line every N steps
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dida: DidaConfig = field(default_factory=DidaConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    perception_aux: PerceptionAuxConfig = field(default_factory=PerceptionAuxConfig)
    semantic_aux: SemanticAuxConfig = field(default_factory=SemanticAuxConfig)

    def __post_init__(self) -> None:
        _check(self.stage in STAGES, f"stage must be one of {STAGES}, got {self.stage!r}")
        _check(bool(self.name) and "/" not in self.name, f"name must be a non-empty name without '/', got {self.name!r}")
        _check(self.device in ("auto", "cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.distributed in STRATEGIES, f"distributed must be one of {STRATEGIES}, got {self.distributed!r}")
        _check(isinstance(self.model, dict), f"model must be a mapping of overrides, got {self.model!r}")
        _check(self.visual_embedding_init in ("random", "tokenizer"),
               f"visual_embedding_init must be 'random' or 'tokenizer', got {self.visual_embedding_init!r}")
        _check(self.visual_codes in VISUAL_CODES,
               f"visual_codes must be one of {VISUAL_CODES}, got {self.visual_codes!r}")
        _check(self.visual_codes == "table" or self.visual_embedding_init == "random",
               f"visual_embedding_init {self.visual_embedding_init!r} initialises table rows; visual_codes "
               f"{self.visual_codes!r} builds them from digit embeddings (use one or the other)")
        _check(isinstance(self.input_embedding_init_std, (int, float)) and self.input_embedding_init_std >= 0,
               f"input_embedding_init_std must be a number >= 0, got {self.input_embedding_init_std!r}")
        _check(not (self.input_embedding_init_std and self.visual_embedding_init == "tokenizer"),
               "input_embedding_init_std redraws the rows that visual_embedding_init 'tokenizer' sets (use one or the other)")
        _check(not self.perception_aux.weight or (self.stage == "next_token" and self.data.answer == "perceive"),
               "perception_aux is for stage next_token with data.answer: perceive (its targets are the perception's objects)")
        _check(not self.semantic_aux.weight or (self.stage == "tokenizer" and self.data.source == "dataset"),
               "semantic_aux is for stage tokenizer on a dataset (its targets are the recording's object pixels)")
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every!r}")
        _check(
            not (self.lora.enabled and self.stage in ("tokenizer", "verifier", "perception")),
            f"lora.enabled is for the language-model stages, not stage {self.stage!r}",
        )
        _check(self.layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "emu35":
            _check(self.stage not in ("tokenizer", "verifier", "perception"),
                   "layout 'emu35' is for the LM stages (the release brings its vision tokenizer)")
            _check(bool(self.init_from), "layout 'emu35' needs init_from=<an Emu3.5 release-format checkpoint directory>")
            _check(self.visual_codes == "table" and self.visual_embedding_init == "random" and not self.input_embedding_init_std,
                   "layout 'emu35' starts from the release's weights: visual_codes, visual_embedding_init and "
                   "input_embedding_init_std are for LMs trained from scratch (leave them at their defaults)")
            _check(self.data.answer == "step", f"layout 'emu35' answers in the plain step format, got data.answer {self.data.answer!r}")
            _check(self.data.source == "dataset", f"layout 'emu35' trains on a dataset, got data.source {self.data.source!r}")

    @property
    def run_dir(self) -> Path:
        from emu_guide.paths import artifacts_root

        return Path(self.checkpoint.dir) if self.checkpoint.dir else artifacts_root() / "train" / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {
    "optim": OptimConfig,
    "data": DataConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
    "lora": LoraConfig,
    "dida": DidaConfig,
    "label": LabelConfig,
    "perception_aux": PerceptionAuxConfig,
    "semantic_aux": SemanticAuxConfig,
}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Dataclass from a mapping; unknown keys are an error naming them (typos never pass silently)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'config'}; known: {sorted(known)}")
    kwargs = {k: _coerce(cls, k, v, where) for k, v in values.items()}
    if cls is TrainConfig:
        for key, sub in _SECTIONS.items():
            if key in kwargs:
                kwargs[key] = _build(sub, kwargs[key] or {}, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a scalar where a list was expected
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """Check scalar field types (and accept "3e-4" for a float: YAML 1.1 reads it as a string)."""
    ftype = {f.name: f.type for f in dataclasses.fields(cls)}[key]
    name = f"{where + '.' if where else ''}{key}"
    if ftype == "float":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if ftype == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if ftype == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if ftype == "str" and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values, "")


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as a YAML scalar) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = values
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return values


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON (.json) file -> dict. Never executes anything."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    text = p.read_text()
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid JSON: {exc}") from None
    elif p.suffix in (".yaml", ".yml"):
        from emu_guide.optional import require

        yaml = require("yaml")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    else:
        raise ConfigError(f"config file {str(p)!r}: expected .yaml, .yml or .json")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Config file (optional) + ``key=value`` overrides -> validated TrainConfig."""
    values = read_config_file(path) if path else {}
    apply_overrides(values, list(overrides or []))
    return config_from_dict(values)
