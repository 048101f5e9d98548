"""The DiDA training batch matches what inference runs, and the loss trains."""

from __future__ import annotations

import numpy as np
import torch

from model_runtime.decoding import ForwardCounter, KVState
from model_runtime.decoding.dida_loss import IGNORE_INDEX, build_dida_batch, dida_loss


def _sequence(layout, seed=0):
    g = np.random.default_rng(seed)
    frame = layout.serialize_image(g.integers(0, layout.num_visual_codes, (2, 3)))
    prompt = [layout.bos, layout.extra["user"], 40, 41] + frame + [layout.extra["assistant"]]
    answer = [45, 46] + layout.serialize_image(g.integers(0, layout.num_visual_codes, (3, 4))) + [layout.eos]
    ids = torch.tensor(prompt + answer)
    labels = ids.clone()
    labels[: len(prompt)] = IGNORE_INDEX
    return ids, labels, len(prompt)


def test_noisy_block_logits_equal_inference_peek(eager_model, layout):
    """Training's noisy-copy logits == decode_image_dida's PEEK over the same noisy block."""
    ids, labels, p = _sequence(layout)
    batch = build_dida_batch(ids[None], labels[None], layout, generator=torch.Generator().manual_seed(0))
    t = batch.clean_length
    noisy = batch.input_ids[0, t:][batch.is_noisy[0, t:]]
    assert noisy[0] == layout.boi and (noisy == layout.mask_id).any()
    assert int(batch.is_noisy.sum()) == len(layout.image_block(3, 4).fixed_ids) + 12  # only the target image
    boi = int(torch.nonzero(ids == layout.boi)[-1])
    with torch.no_grad():
        train_logits = eager_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids).logits[0, t : t + len(noisy)]  # fmt: skip
        clean_alone = eager_model(input_ids=ids[None]).logits[0]
        state, _ = KVState.prefill(ForwardCounter(eager_model), ids[:boi].tolist())
        peek = state.peek(noisy.tolist(), torch.arange(len(noisy)))[0]
    torch.testing.assert_close(train_logits, peek, atol=2e-5, rtol=1e-4)
    # the clean part is untouched by the appended copies
    clean = batch.input_ids.shape[1]
    assert clean > t
    with torch.no_grad():
        clean_in_batch = eager_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                     position_ids=batch.position_ids).logits[0, :t]  # fmt: skip
    torch.testing.assert_close(clean_in_batch, clean_alone, atol=2e-5, rtol=1e-4)


def test_targets_use_the_next_token_shift(layout):
    ids, labels, p = _sequence(layout)
    for noise in ("mask", "uniform"):
        batch = build_dida_batch(ids[None], labels[None], layout, noise=noise, generator=torch.Generator().manual_seed(1))
        t = batch.clean_length
        noisy_ids = batch.input_ids[0, t:]
        tgt = batch.targets[0, t:]
        block = layout.image_block(3, 4)
        clean_block = ids[-1 - block.length : -1]
        for j in block.cell_offsets.tolist():
            if tgt[j - 1] != IGNORE_INDEX:
                assert tgt[j - 1] == clean_block[j]
                assert noisy_ids[j] != clean_block[j] or noise == "uniform"  # scored cells were corrupted
        assert (noisy_ids[block.fixed_offsets] == clean_block[block.fixed_offsets]).all()  # structure pinned
    # clean targets: the usual shift of the labels
    assert torch.equal(batch.targets[0, : t - 1], labels[1:])


def test_dida_loss_decreases_with_training(layout):
    from tests.model_runtime.decoding.conftest import tiny_lm

    model = tiny_lm(layout, "sdpa", seed=3).train()
    seqs = [_sequence(layout, s) for s in range(4)]
    length = max(len(s[0]) for s in seqs)
    ids = torch.full((4, length), layout.pad)
    labels = torch.full((4, length), IGNORE_INDEX)
    pad_mask = torch.zeros(4, length, dtype=torch.long)
    for r, (i, lab, _) in enumerate(seqs):
        ids[r, : len(i)], labels[r, : len(i)], pad_mask[r, : len(i)] = i, lab, 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        batch = build_dida_batch(ids, labels, layout, attention_mask=pad_mask, generator=torch.Generator().manual_seed(step))
        out = dida_loss(model, batch)
        assert torch.isfinite(out.loss) and out.dida_tokens > 0
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append((out.lm_loss.item(), out.dida_loss.item()))
    assert np.mean([x[1] for x in losses[-5:]]) < 0.6 * np.mean([x[1] for x in losses[:5]])
    assert losses[-1][0] < losses[0][0]
