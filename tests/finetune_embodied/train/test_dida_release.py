"""DiDA adaptation of a checkpoint in the Emu3.5 release's format (layout emu35): a few LoRA steps on a
LeRobot dataset, resume, merged export, loaded as the release is and reported DiDA-adapted; bad inputs
are one-line errors. The release is a tiny fixture written from the formats
(tests/model_runtime/backends/emu35_release.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from finetune_embodied.datasets.episode import Episode
from finetune_embodied.datasets.lerobot_v3 import write_dataset
from finetune_embodied.train.checkpoint import load_checkpoint
from finetune_embodied.train.config import ConfigError, load_config
from finetune_embodied.train.distributed import DistInfo
from finetune_embodied.train.loop import train
from finetune_embodied.train.metrics import read_metrics
from finetune_embodied.train.release_export import export_release
from finetune_embodied.train.stages import make_stage
from finetune_embodied.train.synthetic import synthetic_frames
from tests.model_runtime.backends.emu35_release import make_release

pytest.importorskip("peft")

CAM = "observation.images.front"
STEPS = ["pick up the red cup", "place it in the rack."]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    lm_dir, tok_dir, _ = make_release(root)
    eps = []
    for i in range(3):  # 32 px frames, two labelled steps each
        frames = synthetic_frames(8, 32, seed=i)
        eps.append(Episode(task="clear the table", images={CAM: frames}, state=np.zeros((8, 5), np.float32),
                           action=np.zeros((8, 4), np.float32), subtasks=[STEPS[0]] * 4 + [STEPS[1]] * 4))  # fmt: skip
    return lm_dir, tok_dir, write_dataset(root / "ds", eps, fps=10)


def _cfg(release, run_dir, *extra: str):
    lm_dir, tok_dir, ds = release
    return load_config("configs/train/dida_emu35.yaml", [
        f"init_from={lm_dir}", f"text_tokenizer={tok_dir}", "trust_remote_code=true", f"data.path={ds}",
        "data.image_size=8", "data.mid_samples_per_step=0", "data.heldout_fraction=0.34", "lora.r=2", "lora.alpha=4",
        "optim.batch_size=2", "optim.max_steps=3", "optim.warmup_steps=1", "optim.lr=1e-2", "eval.max_samples=2",
        "eval.every=0", "log_every=1", "checkpoint.every=3", "device=cpu", f"checkpoint.dir={run_dir}", *extra,
    ])  # fmt: skip


def test_lora_dida_on_the_release_exports_a_dida_adapted_release(release, tmp_path):
    from model_runtime.backends.base import DecodeOptions, load_backend
    from model_runtime.layout import emu35

    res = train(_cfg(release, tmp_path / "run"), progress=False)
    rows = [r for r in read_metrics(res.run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert len(rows) == 3 and all(np.isfinite(r["dida_loss"]) and r["dida_acc"] >= 0 for r in rows)
    assert "subgoal_code_acc" in res.final_eval
    ck = load_checkpoint(res.checkpoint)
    # Only the adapters are saved: the frozen release stays in init_from.
    assert ck["weights"] and all(".lora_" in k for k in ck["weights"])
    assert ck["config"]["model"]["layout"] == {"name": "emu35"}
    assert ck["config"]["model"]["release"]["image_size"] == [8, 8]
    # The same command resumes from the adapter-only checkpoint (base from init_from again).
    res = train(_cfg(release, tmp_path / "run", "optim.max_steps=4", "checkpoint.every=4"), progress=False)
    assert res.steps == 4 and res.checkpoint.name == "step-00000004"
    peft_model = res.model.eval()

    out = export_release(res.checkpoint, tmp_path / "Emu3.5-DiDA")
    marker = json.loads((out / "dida_adapted.json").read_text())
    assert marker["dida_adapted"] is True and marker["step"] == 4 and marker["lora"]["r"] == 2
    assert json.loads((out / "config.json").read_text())["model_type"] == "Emu3"  # still the release's format
    backend = load_backend("torch", model_path=out, layout="emu35", trust_remote_code=True, image_size=(8, 8))
    assert backend.dida_adapted is True and backend.default_mode.value == "dida"
    # The merged weights are the trained ones: same logits as the LoRA model.
    ids = torch.tensor([[151849, 40, 41, 151852, 17, 9, 17, 151851, 151854 + 5, 151854 + 131_071]])
    with torch.no_grad():
        torch.testing.assert_close(backend.lm(ids).logits, peft_model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
        base = load_backend("torch", model_path=release[0], layout="emu35", text_tokenizer_path=release[1],
                            trust_remote_code=True, image_size=(8, 8))  # fmt: skip
        assert base.dida_adapted is False
        assert not torch.allclose(backend.lm(ids).logits, base.lm(ids).logits)  # the adapters did change it
    assert backend.layout.vocab_size == emu35().vocab_size
    # Its default decode is DiDA: the subgoal block (4x4 cells) in dida_steps parallel passes. (A
    # grammar that owes an image: random tiny weights rarely open one by themselves.)
    from model_runtime.decoding.generate import generate_answer
    from model_runtime.prompt import build_prompt
    from model_runtime.tokenizers import resize_image

    image = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    codes = backend.vision.encode(resize_image(image, (8, 8))[None])[0]
    opts = backend._options(DecodeOptions(max_text_tokens=3, guidance_scale=1.0))
    assert opts.mode.value == "dida"
    answer = generate_answer(backend.lm, build_prompt(backend.layout, backend.text, "clear the table", [], codes),
                             backend.layout, codes.shape, opts, min_images=1, end_after_image=True)  # fmt: skip
    assert answer.image_codes.shape == (4, 4) and answer.forwards["image"] == opts.dida_steps


def test_bad_release_inputs_are_one_line_errors(release, tmp_path):
    lm_dir, tok_dir, ds = release
    info = DistInfo()

    def error(*extra: str) -> str:
        with pytest.raises(ValueError) as err:
            make_stage(_cfg(release, tmp_path / "bad", *extra), info)
        msg = str(err.value)
        assert "\n" not in msg, msg
        return msg

    plain = tmp_path / "plain"  # a Qwen3 checkpoint of the compact layout, not the release
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 1332, "hidden_size": 16}))
    assert "not an Emu3.5 release-format checkpoint" in error(f"init_from={plain}")
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "not an Emu3.5 release-format checkpoint" in error(f"init_from={plain}")
    assert "not an Emu3.5" in error(f"init_from={tmp_path / 'missing'}")
    # The release without its vision tokenizer beside it.
    alone = tmp_path / "alone" / "Emu3.5"
    shutil.copytree(lm_dir, alone)
    assert "no vision tokenizer found" in error(f"init_from={alone}")
    # Its tokenizer is code: refused without the opt-in, and named.
    msg = error("trust_remote_code=false")
    assert "tokenization_emu3.py" in msg and "trust_remote_code: true" in msg
    assert "src/tokenizer_emu3_ibq" in error('text_tokenizer=""')  # the release keeps it apart from the weights
    assert "model overrides" in error("model={hidden_size: 32}")
    with pytest.raises(ConfigError, match="needs init_from"):
        _cfg(release, tmp_path / "bad", 'init_from=""')
    with pytest.raises(ConfigError, match="plain step format"):
        _cfg(release, tmp_path / "bad", "data.answer=perceive")
    # Exporting a compact-layout checkpoint through the release exporter is refused.
    from train_helpers import tiny_lm_config

    compact = train(tiny_lm_config(tmp_path / "compact", "optim.max_steps=1"), progress=False)
    with pytest.raises(ValueError, match="not from a layout-emu35 stage"):
        export_release(compact.checkpoint, tmp_path / "out")


def test_fsdp_is_refused_on_cpu_and_would_wrap_each_decoder_block(monkeypatch):
    import peft
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    from finetune_embodied.train import distributed as D

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="'fsdp' needs CUDA GPUs"):
        D.setup("cpu", "fsdp")
    # The units FSDP would shard on GPUs: the decoder blocks, found through peft's wrapper.
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8))  # fmt: skip
    wrapped = peft.get_peft_model(lm, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert D.block_wrap_policy(wrapped).keywords["transformer_layer_cls"] == {Qwen3DecoderLayer}
    assert D.block_wrap_policy(torch.nn.Linear(2, 2)) is None
