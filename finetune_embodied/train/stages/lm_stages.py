"""Language-model stages: next-token training and DiDA adaptation.

Both train ``model_runtime.lm``'s Qwen3ForCausalLM on ``model_runtime.prompt.TrainingSequence`` samples
(interleaved prompt + answer, per-token loss weights: text 1, visual codes
``data.visual_loss_weight``, prompt 0).

- ``next_token``: weighted next-token cross-entropy.
- ``dida``: the same loss (so text does not drift) plus the DiDA loss of
  ``model_runtime.decoding.dida_loss`` on a noisy copy of each answer image block.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finetune_embodied.train.checkpoint import CheckpointError, load_weights
from finetune_embodied.train.stages.base import Stage, split_heldout
from model_runtime.layout import TokenLayout
from model_runtime.prompt import IGNORE_INDEX, TrainingSequence

LAYOUT_FILE = "layout.json"


def weighted_next_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    world_size: int = 1,
    visual_offset: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Position t predicts token t+1; each target counts with its loss weight.

    logits (B, T, V), labels (B, T) with IGNORE_INDEX on the prompt, weights (B, T).
    Returns (weighted mean CE, {"ce_text", "ce_visual"} unweighted means for logging).

    With several processes the denominator is the weight summed over the GLOBAL batch (times
    world_size, since DDP averages gradients): every token then counts the same whichever rank
    holds it, and N ranks of batch B train exactly like one process of batch N*B.
    """
    lg = logits[:, :-1].float()  # (B, T-1, V)
    tgt = labels[:, 1:]  # (B, T-1)
    w = weights[:, 1:] * (tgt != IGNORE_INDEX)
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.clamp_min(0).reshape(-1), reduction="none").view_as(tgt)
    denom = w.sum().detach()
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(denom)
        denom = denom / world_size
    loss = (ce * w).sum() / denom.clamp_min(1e-8)
    parts: dict[str, float] = {}
    if visual_offset is not None:  # unweighted CE of text and visual targets, for the logs
        with torch.no_grad():
            used = w > 0
            vis = used & (tgt >= visual_offset)
            txt = used & ~vis
            parts["ce_text"] = float(ce[txt].mean()) if txt.any() else float("nan")
            parts["ce_visual"] = float(ce[vis].mean()) if vis.any() else float("nan")
    return loss, parts


def code_appearance_features(vision, batch: int = 125) -> np.ndarray:
    """(num_codes, 15) what each visual code looks like: decode a grid filled with that code and take
    the mean RGB of the centre cell's pixels and of its four quadrants, standardised per feature."""
    n = vision.num_codes
    h, w = vision.code_grid()
    feats = []
    for start in range(0, n, batch):
        codes = np.arange(start, min(start + batch, n), dtype=np.int64)
        images = vision.decode(np.broadcast_to(codes[:, None, None], (len(codes), h, w)).copy()).astype(np.float32) / 255.0
        ph, pw = images.shape[1] // h, images.shape[2] // w
        r, c = h // 2, w // 2
        cell = images[:, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
        q = [cell[:, : ph // 2, : pw // 2], cell[:, : ph // 2, pw // 2 :], cell[:, ph // 2 :, : pw // 2], cell[:, ph // 2 :, pw // 2 :]]
        feats.append(np.concatenate([cell.mean((1, 2))] + [x.mean((1, 2)) for x in q], axis=1))
    f = np.concatenate(feats)
    return (f - f.mean(0)) / (f.std(0) + 1e-6)


def scale_input_embedding(model: torch.nn.Module, std: float, visual_offset: int, num_visual_codes: int) -> None:
    """Redraw the input embedding with standard deviation ``std`` (from the global torch RNG, which
    ``build_lm`` seeded). A factorised table draws its digit tables so that a code's summed row has
    ``std``; its per-code residual ("factorized") stays at zero."""
    from finetune_embodied.train.factorized_codes import FactorizedCodeEmbedding

    emb = model.get_input_embeddings()
    with torch.no_grad():
        residual = emb.weight[visual_offset : visual_offset + num_visual_codes].clone()
        emb.weight.normal_(0.0, std)
        if isinstance(emb, FactorizedCodeEmbedding):
            if emb.residual:
                emb.weight[visual_offset : visual_offset + num_visual_codes] = residual
            for table in emb.digit_tables:
                table.normal_(0.0, std / len(emb.digit_tables) ** 0.5)


@torch.no_grad()
def init_visual_embeddings(model: torch.nn.Module, layout: TokenLayout, vision, seed: int = 0, structured: float = 0.8) -> None:
    """Start each visual code's embedding row from what the code looks like (a random projection of
    ``code_appearance_features``) plus a random part, at the model's initializer scale.

    Codes that decode to similar colours start close together, so a word learned from some red codes
    already transfers to the other red codes; with tied embeddings the subgoal-image head starts
    with the same structure. Training is free to move every row (this is only an initialisation,
    the exported model is a plain Qwen3).
    """
    emb = model.get_input_embeddings().weight
    feats = torch.from_numpy(code_appearance_features(vision)).to(emb.dtype)
    g = torch.Generator().manual_seed(int(seed))
    proj = torch.randn(feats.shape[1], emb.shape[1], generator=g) / feats.shape[1] ** 0.5
    noise = torch.randn(feats.shape[0], emb.shape[1], generator=g)
    std = float(getattr(model.config, "initializer_range", 0.02))
    shaped = feats @ proj
    shaped = shaped / shaped.std()  # the features are correlated (all colour means): rescale to unit variance
    rows = std * (structured * shaped + (1 - structured**2) ** 0.5 * noise)
    lo = layout.visual_offset
    emb[lo : lo + layout.num_visual_codes] = rows.to(emb.device)


PROBE_KEY = "perception_probe."  # training-only weights (perception_aux): never exported or carried over


class PerceptionProbe(torch.nn.Module):
    """The training-only heads of ``perception_aux``: per image token, the object centred in it (none
    or one of ``num_classes``) and the token's coarse cell (model_runtime.prompt COLUMNS x ROWS)."""

    def __init__(self, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        from model_runtime.prompt import COLUMNS, ROWS

        self.objects = torch.nn.Linear(hidden_size, num_classes + 1)
        self.cells = torch.nn.Linear(hidden_size, len(COLUMNS) * len(ROWS))


def token_cells(grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h * grid_w,) the coarse cell index (row * 3 + column) of each image token, row-major."""
    from model_runtime.prompt import COLUMNS, ROW_SPLIT

    r = torch.arange(grid_h).repeat_interleave(grid_w)
    c = torch.arange(grid_w).repeat(grid_h)
    col = ((c.float() + 0.5) * len(COLUMNS) / grid_w).long().clamp(max=len(COLUMNS) - 1)
    row = ((r.float() + 0.5) / grid_h >= ROW_SPLIT).long()
    return row * len(COLUMNS) + col


def _probe_inputs(hidden: torch.Tensor, samples, layout: TokenLayout):
    """(states, object targets, cell targets) of the prompt-frame tokens of the samples with ``frame_cells``."""
    feats, objects, cells = [], [], []
    for r, s in enumerate(samples):
        spans = [sp for sp in s.image_spans if not sp.is_target]
        if s.frame_cells is None or not spans:
            continue
        sp = spans[0]
        block = layout.image_block(sp.height, sp.width)
        pos = torch.as_tensor(sp.start + block.cell_offsets, device=hidden.device)
        feats.append(hidden[r, pos])
        objects.append(torch.as_tensor(s.frame_cells, device=hidden.device))
        cells.append(token_cells(sp.height, sp.width).to(hidden.device))
    if not feats:
        return None
    return torch.cat(feats).float(), torch.cat(objects), torch.cat(cells)


def perception_aux_loss(probe: PerceptionProbe, hidden: torch.Tensor, samples, layout: TokenLayout,
                        object_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean CE of the probe's object and cell heads over the prompt-frame tokens of ``samples`` that
    carry ``frame_cells``; tokens with an object centred in them weigh ``object_weight``."""
    inputs = _probe_inputs(hidden, samples, layout)
    if inputs is None:
        zero = hidden.sum() * 0.0
        return zero, {"aux_object_ce": float("nan"), "aux_cell_ce": float("nan"), "aux_object_acc": float("nan")}
    h, obj, cell = inputs
    obj_logits = probe.objects(h)
    w = torch.where(obj > 0, float(object_weight), 1.0)
    obj_ce = (F.cross_entropy(obj_logits, obj, reduction="none") * w).sum() / w.sum()
    cell_ce = F.cross_entropy(probe.cells(h), cell)
    with torch.no_grad():
        hit = obj > 0
        acc = float((obj_logits[hit].argmax(-1) == obj[hit]).float().mean()) if hit.any() else float("nan")
    return obj_ce + cell_ce, {"aux_object_ce": float(obj_ce), "aux_cell_ce": float(cell_ce), "aux_object_acc": acc}


@torch.no_grad()
def probe_counts(probe: PerceptionProbe, hidden: torch.Tensor, samples, layout: TokenLayout) -> tuple[int, int, int, int]:
    """(object tokens named right, object tokens, empty tokens given an object, empty tokens): how
    well the probe reads ``samples`` (held-out ones in ``evaluate``: does the reading generalise?)."""
    inputs = _probe_inputs(hidden, samples, layout)
    if inputs is None:
        return 0, 0, 0, 0
    h, obj, _ = inputs
    pred = probe.objects(h).argmax(-1)
    hit = obj > 0
    return int((pred[hit] == obj[hit]).sum()), int(hit.sum()), int((pred[~hit] != 0).sum()), int((~hit).sum())


class LMStage(Stage):
    name = "next_token"

    def __init__(self, cfg, info) -> None:
        super().__init__(cfg, info)
        self.data_report = ""
        self.text_tok, self.layout, sequences, groups = self._load_data()
        self.train_set, self.eval_set = split_heldout(sequences, groups, cfg.data.heldout_fraction)
        # Held-out metrics are about guidance answers; rest-of-plan answers only train.
        self.eval_set = [s for s in self.eval_set if s.kind == "step"]
        self.train_set = [s for s in self.train_set if s.kind in cfg.data.train_kinds]
        if not self.train_set:
            raise ValueError(f"stage {self.name!r}: no training sequences of kinds {cfg.data.train_kinds} after "
                             "holding out evaluation episodes")
        longest = max(len(s) for s in sequences)
        if longest > cfg.data.max_seq_len:
            raise ValueError(
                f"a training sequence has {longest} tokens, more than data.max_seq_len={cfg.data.max_seq_len}"
                " (raise it, or keep fewer done steps with data.max_history)"
            )
        self.vision = self._load_vision_tokenizer()

    # ---- data -------------------------------------------------------------------------------
    def _load_data(self) -> tuple[Any, TokenLayout, list[TrainingSequence], list[int]]:
        d = self.cfg.data
        if d.source == "synthetic":
            from finetune_embodied.train.synthetic import synthetic_sequences

            seqs, layout, tok = synthetic_sequences(
                d.num_synthetic, d.synthetic_grid, d.synthetic_codes, self.cfg.seed, d.visual_loss_weight
            )
            # Five sequences per synthetic episode (four steps + done): group by episode.
            return tok, layout, seqs, [i // 5 for i in range(len(seqs))]
        from finetune_embodied.train.stages.lm_data import dataset_sequences

        tok, layout, seqs, groups, self.data_report = dataset_sequences(self.cfg, self.info)
        return tok, layout, seqs, groups

    def _load_vision_tokenizer(self):
        if not self.cfg.tokenizer:
            return None
        from finetune_embodied.train.stages.tokenizer_stage import load_tokenizer_or_checkpoint

        return load_tokenizer_or_checkpoint(self.cfg.tokenizer)

    def collate(self, samples: list[TrainingSequence]) -> dict[str, Any]:
        """Right-pad to the longest sample (PAD ids, attention 0, label IGNORE, weight 0); keep the samples."""
        from finetune_embodied.sequences import collate_sequences

        return {**collate_sequences(samples, self.layout.pad), "samples": samples}

    # ---- model ------------------------------------------------------------------------------
    def lm_config(self):
        from model_runtime.lm import LMConfig

        overrides = dict(self.cfg.model)
        if "vocab_size" in overrides and overrides["vocab_size"] != self.layout.vocab_size:
            raise ValueError(f"model.vocab_size {overrides['vocab_size']} != the layout's {self.layout.vocab_size}")
        overrides["vocab_size"] = self.layout.vocab_size
        try:
            return LMConfig(**overrides)
        except TypeError as exc:
            raise ValueError(f"model: {exc} (LMConfig fields: see model_runtime/lm.py)") from None

    def build_model(self) -> torch.nn.Module:
        from model_runtime.lm import build_lm, pick_attn_implementation

        model = build_lm(self.lm_config(), attn_implementation=pick_attn_implementation(self.info.device), seed=self.cfg.seed)
        if self.cfg.visual_embedding_init == "tokenizer" and not self.cfg.init_from:
            if self.vision is None:
                raise ValueError("visual_embedding_init 'tokenizer' needs `tokenizer:` (the trained vision tokenizer)")
            init_visual_embeddings(model, self.layout, self.vision, self.cfg.seed)
        if self.cfg.visual_codes != "table":
            from finetune_embodied.train.factorized_codes import apply_factorized_codes

            apply_factorized_codes(model, self.layout.visual_offset, self.code_levels(),
                                   residual=self.cfg.visual_codes == "factorized")
        if self.cfg.input_embedding_init_std and not self.cfg.init_from:
            if model.config.tie_word_embeddings:
                raise ValueError(
                    f"input_embedding_init_std {self.cfg.input_embedding_init_std} needs an untied output head "
                    "(model.tie_word_embeddings: false): tied, the head would start with logits that large too"
                )
            scale_input_embedding(model, self.cfg.input_embedding_init_std, self.layout.visual_offset,
                                  self.layout.num_visual_codes)
        if self.cfg.perception_aux.weight:
            self._attach_probe(model)
        return model.train()

    def _attach_probe(self, model: torch.nn.Module) -> None:
        from finetune_embodied.train.stages.lm_data import perception_classes

        aux = self.cfg.perception_aux
        if aux.layer > model.config.num_hidden_layers:
            raise ValueError(f"perception_aux.layer {aux.layer} > the model's {model.config.num_hidden_layers} layers")
        if self.info.world_size > 1:
            raise ValueError("perception_aux runs in one process only (its heads sit outside the DDP forward)")
        g = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed + 7)  # the probe's init does not shift the model's random stream
        model.perception_probe = PerceptionProbe(model.config.hidden_size, len(perception_classes(self.cfg)))
        torch.set_rng_state(g)

    def code_levels(self) -> tuple[int, ...]:
        """The FSQ levels behind the visual codes (``visual_codes`` other than "table" need them)."""
        levels = getattr(getattr(self.vision, "config", None), "levels", None)
        if not levels:
            raise ValueError(
                f"visual_codes {self.cfg.visual_codes!r} needs an FSQ vision tokenizer (`tokenizer:`), "
                f"got {type(self.vision).__name__ if self.vision is not None else 'none'}"
            )
        return tuple(int(v) for v in levels)

    def model_config(self) -> dict[str, Any]:
        from dataclasses import asdict

        doc = {"kind": "lm", "lm": asdict(self.lm_config()), "layout": self._layout_doc()}
        if self.cfg.visual_codes != "table":  # what export needs to materialise the plain table
            doc["visual_codes"] = {"mode": self.cfg.visual_codes, "levels": list(self.code_levels())}
        return doc

    def _layout_doc(self) -> dict[str, Any]:
        return {"name": self.layout.name, "num_text_words": self.layout.visual_offset - 32,
                "num_visual_codes": self.layout.num_visual_codes}

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.cfg.lora.enabled:
            return model
        from emu_guide.optional import require

        peft = require("peft")
        lc = self.cfg.lora
        config = peft.LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                 target_modules=list(lc.target_modules), bias="none")
        return peft.get_peft_model(model, config)

    def load_init(self, model: torch.nn.Module, path: str | Path) -> None:
        """Weights of a previous LM stage (our checkpoint dir or an exported Qwen3 dir)."""
        from finetune_embodied.train.vocabulary import fit_init_weights, init_files

        path = Path(path)
        wfile = init_files(path)[0]  # an LM checkpoint, or a model directory (the shipped default model)
        if not wfile.is_file():
            raise CheckpointError(f"init_from {str(path)!r}: no model.safetensors (not an LM checkpoint or model directory)")
        # rows moved to this run's ids when data.new_words=extend added words (train/vocabulary.py)
        weights = fit_init_weights(load_weights(wfile), path, self.text_tok, self.layout.num_visual_codes)
        weights = {k.removeprefix("base_model.model."): v for k, v in weights.items() if not k.startswith(PROBE_KEY)}
        if any(".lora_" in k for k in weights):
            raise CheckpointError(f"init_from {str(path)!r} holds LoRA adapters; export (merge) it first")
        from finetune_embodied.train.factorized_codes import DIGIT_KEY, materialize

        has_digits = any(k.startswith(DIGIT_KEY) for k in weights)
        if has_digits and self.cfg.visual_codes == "table":
            # A factorised checkpoint into a plain table: the summed rows carry over exactly.
            levels, residual = self._init_visual_codes(path)
            weights = materialize(weights, self.layout.visual_offset, levels, residual=residual)
        elif not has_digits and self.cfg.visual_codes != "table":
            raise CheckpointError(
                f"init_from {str(path)!r} has a plain embedding table; visual_codes {self.cfg.visual_codes!r} "
                "starts from a factorised checkpoint or from scratch (use visual_codes: table)"
            )
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if k != "lm_head.weight" and not k.startswith(PROBE_KEY)]
        if missing or unexpected:
            raise CheckpointError(
                f"init_from {str(path)!r} does not fit the configured LM: missing {missing[:3]}, unexpected"
                f" {list(unexpected)[:3]}; shapes must match (same model overrides and vocabulary)"
            )

    @staticmethod
    def _init_visual_codes(path: Path) -> tuple[tuple[int, ...], bool]:
        """(FSQ levels, residual) of a factorised ``init_from`` checkpoint, from its config.json."""
        cfg_file = Path(path) / "config.json"
        doc = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        vc = (doc.get("model") or {}).get("visual_codes") or {}
        if not vc.get("levels"):
            raise CheckpointError(f"init_from {str(path)!r}: factorised weights but no visual_codes levels in config.json")
        return tuple(int(v) for v in vc["levels"]), vc.get("mode", "factorized") == "factorized"

    def write_files(self, directory: Path) -> None:
        self.text_tok.save(directory)
        (directory / LAYOUT_FILE).write_text(json.dumps(self._layout_doc(), indent=2) + "\n")
        if self.cfg.tokenizer:
            (directory / "vision_tokenizer.txt").write_text(str(Path(self.cfg.tokenizer).resolve()) + "\n")

    # ---- loss -------------------------------------------------------------------------------
    def loss(self, model, batch, gen):
        aux = self.cfg.perception_aux
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=bool(aux.weight))
        loss, parts = weighted_next_token_loss(
            out.logits, batch["labels"], batch["loss_weights"], self.info.world_size, self.layout.visual_offset
        )
        if aux.weight:
            probe = getattr(model, "module", model).perception_probe
            aux_loss, aux_parts = perception_aux_loss(probe, out.hidden_states[aux.layer], batch["samples"],
                                                      self.layout, aux.object_weight)
            loss = loss + aux.weight * aux_loss
            parts.update(aux_parts)
        return loss, parts

    # ---- evaluation -------------------------------------------------------------------------
    def _text_positions(self, s: TrainingSequence) -> list[int]:
        """Answer positions of the step text (or the done marker): from the answer start to the target image."""
        targets = [sp for sp in s.image_spans if sp.is_target]
        end = targets[0].start if targets else len(s) - 1  # final answer: the done marker, not EOS
        return list(range(s.prompt_length, end))

    def predict_image_logits(self, model, batch) -> list[torch.Tensor]:
        """Per sample, logits (cells, V) that predict the target image's cells (teacher-forced AR here)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = []
        for r, s in enumerate(batch["samples"]):
            tgt = [sp for sp in s.image_spans if sp.is_target]
            if not tgt:
                out.append(None)
                continue
            block = self.layout.image_block(tgt[0].height, tgt[0].width)
            cells = torch.as_tensor(tgt[0].start + block.cell_offsets)
            out.append(logits[r, cells - 1])  # position p-1 predicts token p
        return out, logits

    def evaluate(self, model) -> dict[str, float]:
        from model_runtime.image_metrics import object_position_error, psnr

        samples = self.eval_samples()
        if not samples:
            return {}
        bs = self.cfg.eval.batch_size
        text_ok = text_tot = exact = n_text = 0
        code_ok = code_tot = 0
        psnrs: list[float] = []
        pos_errs: list[float] = []
        found = n_obj = 0
        ce_sum = w_sum = 0.0
        probe = [0, 0, 0, 0]
        lo, hi = self.layout.visual_offset, self.layout.visual_offset + self.layout.num_visual_codes
        for i in range(0, len(samples), bs):
            batch = self.collate(samples[i : i + bs])
            batch = {k: (v.to(self.info.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            img_logits, logits = self.predict_image_logits(model, batch)
            if self.cfg.perception_aux.weight:  # the probe on held-out frames: memorised or read?
                hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True).hidden_states[self.cfg.perception_aux.layer]
                counts = probe_counts(model.perception_probe, hidden, batch["samples"], self.layout)
                probe = [a + b for a, b in zip(probe, counts)]
            loss, _ = weighted_next_token_loss(logits, batch["labels"], batch["loss_weights"])
            w = float((batch["loss_weights"][:, 1:] * (batch["labels"][:, 1:] != IGNORE_INDEX)).sum())
            ce_sum += float(loss) * w
            w_sum += w
            pred = logits.argmax(-1).cpu()
            for r, s in enumerate(batch["samples"]):
                pos = self._text_positions(s)
                ok = [int(pred[r, p - 1]) == int(s.input_ids[p]) for p in pos]
                text_ok += sum(ok)
                text_tot += len(ok)
                exact += int(all(ok))
                n_text += 1
                if img_logits[r] is None:
                    continue
                sp = [x for x in s.image_spans if x.is_target][0]
                pred_codes = (img_logits[r][:, lo:hi].argmax(-1).cpu().numpy()).reshape(sp.height, sp.width)
                true_codes = self.layout.parse_image(s.input_ids[sp.start : sp.end])
                code_ok += int((pred_codes == true_codes).sum())
                code_tot += true_codes.size
                if self.vision is not None:
                    # Both through the same decoder: measures the LM, not the tokenizer's own error.
                    pred_img, true_img = self.vision.decode(np.stack([pred_codes, true_codes]))
                    psnrs.append(min(psnr(pred_img, true_img), 100.0))
                    pe = object_position_error(pred_img, true_img)
                    found += pe.matched
                    n_obj += pe.num_objects
                    if pe.matched:
                        pos_errs.append(pe.mean_px)
        out = {
            "loss": ce_sum / max(w_sum, 1e-8),
            "text_token_acc": text_ok / max(text_tot, 1),
            "next_step_text_acc": exact / max(n_text, 1),
            "subgoal_code_acc": code_ok / max(code_tot, 1),
            "samples": float(len(samples)),
        }
        if probe[1]:
            out["probe_object_acc"] = probe[0] / probe[1]
            out["probe_empty_as_object"] = probe[2] / max(probe[3], 1)
        if psnrs:
            out["subgoal_psnr_db"] = float(np.mean(psnrs))
            out["subgoal_object_found_frac"] = found / n_obj if n_obj else float("nan")
            out["subgoal_object_pos_err_px"] = float(np.mean(pos_errs)) if pos_errs else float("nan")
        return out


class DidaStage(LMStage):
    name = "dida"

    def loss(self, model, batch, gen):
        from finetune_embodied.train.stages.dida import dida_training_loss

        return dida_training_loss(self, model, batch, gen)

    def predict_image_logits(self, model, batch):
        from finetune_embodied.train.stages.dida import dida_image_logits

        return dida_image_logits(self, model, batch)
