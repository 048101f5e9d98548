"""Each stage trains end to end through the one loop on tiny models."""

from __future__ import annotations

import pytest
import torch

from finetune_embodied.train.checkpoint import load_checkpoint
from finetune_embodied.train.config import load_config
from finetune_embodied.train.loop import train
from finetune_embodied.train.metrics import read_metrics
from finetune_embodied.train.stages.tokenizer_stage import load_tokenizer_or_checkpoint


def _train_losses(run_dir, key="loss"):
    return [r[key] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train" and r.get(key) is not None]


def test_tokenizer_stage_learns_and_saves_a_loadable_tokenizer(tmp_path):
    cfg = load_config(None, [
        "stage=tokenizer", "data.source=synthetic", "data.num_synthetic=8", "data.heldout_fraction=0.25",
        "data.image_size=32", "model={channels: [16, 32], levels: [5, 5]}", "optim.batch_size=6",
        "optim.max_steps=25", "optim.lr=3e-3", "optim.warmup_steps=2", "log_every=5", "eval.every=25",
        f"checkpoint.dir={tmp_path / 'tok'}",
    ])
    res = train(cfg, progress=False)
    losses = _train_losses(res.run_dir)
    assert losses[-1] < 0.6 * losses[0], losses
    assert res.final_eval["recon_psnr_db"] > 15 and "object_pos_err_px" in res.final_eval
    tok = load_tokenizer_or_checkpoint(res.checkpoint)  # the checkpoint holds a loadable tokenizer directory
    assert tok.num_codes == 25 and tok.code_grid() == (8, 8)
    frames = load_checkpoint(res.checkpoint)["weights"]
    assert any(k.startswith("encoder.") for k in frames)


def test_dida_stage_starts_from_next_token_and_learns_parallel_cells(tiny_lm):
    import math

    nt = train(tiny_lm("nt", "optim.max_steps=10"), progress=False)
    cfg = tiny_lm("dida", "stage=dida", f"init_from={nt.checkpoint}", "optim.max_steps=12", "log_every=1",
                  "data.num_synthetic=10", "optim.batch_size=8", "eval.every=12")
    res = train(cfg, progress=False)
    rows = [r for r in read_metrics(res.run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["dida_loss"] < 0.7 * rows[0]["dida_loss"], [r["dida_loss"] for r in rows]
    # It started from the next-token weights: the text/LM loss is already far below chance
    # (ln(vocab)) at the first step, and does not drift up while DiDA adapts.
    vocab = load_checkpoint(nt.checkpoint)["config"]["model"]["lm"]["vocab_size"]
    assert rows[0]["lm_loss"] < 0.8 * math.log(vocab)
    assert rows[-1]["lm_loss"] < rows[0]["lm_loss"] * 1.1
    assert {"next_step_text_acc", "subgoal_code_acc"} <= set(res.final_eval)


def test_init_from_a_mismatched_model_is_refused(tiny_lm):
    nt = train(tiny_lm("nt", "optim.max_steps=1"), progress=False)
    cfg = tiny_lm("wide", "stage=dida", f"init_from={nt.checkpoint}",
                  "model={hidden_size: 96, num_layers: 2, num_heads: 3, num_kv_heads: 1, head_dim: 32}")
    with pytest.raises(Exception, match="does not fit|size mismatch"):
        train(cfg, progress=False)


def test_lora_trains_adapters_only(tiny_lm):
    pytest.importorskip("peft")
    nt = train(tiny_lm("nt", "optim.max_steps=2"), progress=False)
    cfg = tiny_lm("lora", f"init_from={nt.checkpoint}", "lora.enabled=true", "lora.r=4",
                  "lora.target_modules=[q_proj, v_proj]", "optim.max_steps=3")
    res = train(cfg, progress=False)
    w = load_checkpoint(res.checkpoint)["weights"]
    assert any("lora_A" in k for k in w)
    base = load_checkpoint(nt.checkpoint)["weights"]
    # Frozen base weights are unchanged; only adapters moved.
    k = "base_model.model.model.layers.0.mlp.up_proj.weight"
    assert torch.equal(w[k], base["model.layers.0.mlp.up_proj.weight"])


def test_bf16_on_cpu_is_refused(tiny_lm):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        train(tiny_lm("bf", "precision=bf16", "optim.max_steps=1"), progress=False)


def test_visual_embedding_init_follows_what_codes_look_like():
    import numpy as np

    from finetune_embodied.train.config import ConfigError
    from finetune_embodied.train.stages.lm_stages import code_appearance_features, init_visual_embeddings
    from model_runtime.layout import compact
    from model_runtime.lm import LMConfig, build_lm
    from model_runtime.tokenizers.fsq import FSQConfig, FSQTokenizer

    torch.manual_seed(0)
    vision = FSQTokenizer.from_config(FSQConfig(image_size=32, levels=(4, 4, 4), channels=(8, 8, 8), out_channels=8))
    layout = compact(10, vision.num_codes)
    model = build_lm(LMConfig(vocab_size=layout.vocab_size, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                              head_dim=32, intermediate_size=64))
    before = model.get_input_embeddings().weight.detach().clone()
    init_visual_embeddings(model, layout, vision, seed=0)
    after = model.get_input_embeddings().weight.detach()
    lo, hi = layout.visual_offset, layout.visual_offset + layout.num_visual_codes
    assert torch.equal(before[:lo], after[:lo]) and not torch.equal(before[lo:hi], after[lo:hi])
    assert abs(float(after[lo:hi].std()) - 0.02) < 0.005  # the model's initializer scale
    # codes that look alike start close: embedding distances follow appearance distances
    feats = code_appearance_features(vision)
    emb = after[lo:hi].numpy()
    pairs = np.random.default_rng(0).integers(0, vision.num_codes, size=(400, 2))
    d_feat = np.linalg.norm(feats[pairs[:, 0]] - feats[pairs[:, 1]], axis=1)
    d_emb = np.linalg.norm(emb[pairs[:, 0]] - emb[pairs[:, 1]], axis=1)
    assert np.corrcoef(d_feat, d_emb)[0, 1] > 0.5
    with pytest.raises(ConfigError, match="visual_embedding_init"):
        load_config(None, ["data.source=synthetic", "visual_embedding_init=pretty"])


def test_input_embedding_init_std_redraws_the_input_rows_and_needs_an_untied_head(tiny_lm):
    from finetune_embodied.train.config import ConfigError
    from finetune_embodied.train.distributed import DistInfo
    from finetune_embodied.train.factorized_codes import apply_factorized_codes
    from finetune_embodied.train.stages import make_stage
    from finetune_embodied.train.stages.lm_stages import scale_input_embedding
    from model_runtime.lm import LMConfig, build_lm

    untied = "model={hidden_size: 64, num_layers: 2, num_heads: 2, num_kv_heads: 1, head_dim: 32, intermediate_size: 128, tie_word_embeddings: false}"  # fmt: skip
    info = DistInfo()
    stage = make_stage(tiny_lm("untied", untied, "input_embedding_init_std=1.0"), info)
    model = stage.build_model()
    assert abs(float(model.get_input_embeddings().weight.detach().std()) - 1.0) < 0.1
    assert abs(float(model.lm_head.weight.detach().std()) - 0.02) < 0.005  # the head keeps the model's scale
    default = make_stage(tiny_lm("default", untied), info).build_model()
    assert abs(float(default.get_input_embeddings().weight.detach().std()) - 0.02) < 0.005
    with pytest.raises(ValueError, match="untied output head"):
        make_stage(tiny_lm("tied", "input_embedding_init_std=1.0"), info).build_model()
    with pytest.raises(ConfigError, match="input_embedding_init_std"):
        load_config(None, ["data.source=synthetic", "input_embedding_init_std=-1"])

    # factorised rows: a code's summed row gets the std; the per-code residual stays zero
    levels, text_rows = (8, 5, 5, 5), 40
    cfg = LMConfig(vocab_size=text_rows + 1000, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32,
                   intermediate_size=64, tie_word_embeddings=False)  # fmt: skip
    for residual in (False, True):
        lm = apply_factorized_codes(build_lm(cfg), text_rows, levels, residual=residual)
        scale_input_embedding(lm, 1.0, text_rows, 1000)
        emb = lm.get_input_embeddings()
        table = emb.table().detach()
        assert abs(float(table[:text_rows].std()) - 1.0) < 0.15 and abs(float(table[text_rows:].std()) - 1.0) < 0.1
        assert bool((emb.weight[text_rows:] == 0).all()) == residual
