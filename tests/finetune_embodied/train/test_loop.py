"""End-to-end tiny trainings through the one loop, and exact resume."""

from __future__ import annotations

import json

import torch

from finetune_embodied.train.checkpoint import list_checkpoints, load_checkpoint
from finetune_embodied.train.loop import EpochSampler, train
from finetune_embodied.train.metrics import read_metrics


def test_next_token_stage_learns_and_writes_everything(tiny_lm):
    # A fixed tiny batch (the whole training set is one batch): the loss must fall clearly.
    cfg = tiny_lm("nt", "data.num_synthetic=10", "data.heldout_fraction=0.5", "optim.batch_size=5",
                  "optim.max_steps=25", "eval.every=25")
    res = train(cfg, progress=False)
    rows = read_metrics(res.run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert losses[-1] < 0.5 * losses[0], losses
    ev = [r for r in rows if r["split"] == "eval"][-1]
    assert {"text_token_acc", "next_step_text_acc", "subgoal_code_acc", "loss"} <= set(ev)
    assert (res.run_dir / "loss_curves.png").stat().st_size > 1000
    ck = load_checkpoint(res.checkpoint)
    assert ck["trainer_state"]["step"] == 25
    assert (res.checkpoint / "text_tokenizer.json").is_file() and (res.checkpoint / "layout.json").is_file()
    assert ck["config"]["model"]["lm"]["hidden_size"] == 64


def test_killed_run_resumes_to_the_same_weights(tiny_lm):
    straight = train(tiny_lm("a"), progress=False)
    # Same config in another directory: stop after step 5 (as if killed after that checkpoint)...
    cfg_b = tiny_lm("b", "checkpoint.every=5")
    first = train(cfg_b, stop_after_step=5, progress=False)
    assert first.steps == 5 and first.checkpoint.name == "step-00000005"
    # ... and run the same command again: it resumes from step 5 and goes on to 12.
    resumed = train(cfg_b, progress=False)
    assert resumed.steps == 12
    wa = load_checkpoint(straight.checkpoint)["weights"]
    wb = load_checkpoint(resumed.checkpoint)["weights"]
    w5 = load_checkpoint(first.checkpoint)["weights"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert any(not torch.equal(wa[k], w5[k]) for k in wa)  # the resumed part really trained
    # The metrics log has each step once (lines past the resume point are replayed, not duplicated).
    steps = [r["step"] for r in read_metrics(resumed.run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(set(steps))
    # keep_last (3 by default) pruned older checkpoints.
    assert [p.name for p in list_checkpoints(resumed.run_dir / "checkpoints")] == [
        "step-00000005", "step-00000010", "step-00000012"]


def test_resume_with_different_data_order_would_differ(tiny_lm):
    """Guard that the resume test can fail: a different seed (data order) gives other weights."""
    a = train(tiny_lm("s0", "optim.max_steps=4"), progress=False)
    b = train(tiny_lm("s1", "optim.max_steps=4", "seed=1"), progress=False)
    wa, wb = load_checkpoint(a.checkpoint)["weights"], load_checkpoint(b.checkpoint)["weights"]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_epoch_sampler_is_a_permutation_per_epoch():
    s = EpochSampler(7, seed=3)
    first = s.indices(0, 7)
    assert sorted(first) == list(range(7))
    assert s.indices(7, 7) != first  # next epoch reshuffled
    assert s.indices(3, 6) == first[3:] + s.indices(7, 2)
    assert EpochSampler(7, seed=3).indices(10, 3) == s.indices(10, 3)


def test_run_dir_records_config(tiny_lm):
    res = train(tiny_lm("c", "optim.max_steps=2"), progress=False)
    saved = json.loads((res.run_dir / "train_config.json").read_text())
    assert saved["optim"]["max_steps"] == 2 and saved["stage"] == "next_token"
    assert json.loads((res.run_dir / "summary.json").read_text())["steps"] == 2


def test_resume_never_starts_over_and_drops_stale_checkpoints(tiny_lm):
    train(tiny_lm("n", "optim.max_steps=4"), progress=False)
    res = train(tiny_lm("n", "optim.max_steps=4", "checkpoint.resume=never"), stop_after_step=2, progress=False)
    assert [p.name for p in list_checkpoints(res.run_dir / "checkpoints")] == ["step-00000002"]


def test_heldout_split_is_by_whole_episode_and_spread():
    from finetune_embodied.train.stages.base import split_heldout

    groups = [g for g in range(20) for _ in range(3)]  # 20 episodes, 3 samples each
    train_set, eval_set = split_heldout(list(range(60)), groups, 0.1)
    held = sorted({groups[i] for i in eval_set})
    assert held == [9, 19] and len(eval_set) == 6 and not set(train_set) & set(eval_set)
    assert split_heldout([1, 2], [0, 0], 0.5) == ([1, 2], [])  # one episode: nothing to hold out
