"""The reproduce-the-default pipeline end to end, at toy size: record -> 4 stages (+ reading) -> export -> TorchBackend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emu_guide.paths import PROJECT_ROOT
from finetune_embodied.default_model import run_pipeline, sim_instruction_texts

# (untied, as the recipe's LM stages are: a tied head refuses input_embedding_init_std)
TINY = ("model={hidden_size: 64, num_layers: 2, num_heads: 2, num_kv_heads: 1, head_dim: 32, intermediate_size: 128, "
        "tie_word_embeddings: false}")
FAST = ["optim.max_steps=2", "eval.max_samples=2", "data.heldout_fraction=0.5"]
FIRST = ["data.first_episodes=2"]  # the stages before refine read the first 2 of the 3 recorded episodes
TOY_STAGES = {
    "tokenizer": ["data.image_size=32", "model={channels: [16, 32], levels: [5, 5]}", "data.frames_per_episode=4", *FAST, *FIRST],
    "reading": [TINY, *FAST, *FIRST],
    "next_token": [TINY, *FAST, *FIRST],
    "dida": [TINY, *FAST, *FIRST],
    "refine": [TINY, *FAST, "eval.every=2", "data.new_words=extend"],  # 2 toy episodes lack words of the third
    "refine_dida": [TINY, *FAST],
    "verifier": ["data.image_size=32", "model={width: 8, text_dim: 8}", *FAST, *FIRST],
    "perception": ["data.image_size=32", "model={grid: 4, width: 8, layers: 1, heads: 2}", *FAST, *FIRST],
    "perception_names": ["data.image_size=32", "model={grid: 4, width: 8, layers: 1, heads: 2, name_crop: 8}",
                         "data.reader_crops=16", *FAST, *FIRST],
}
TOY_RECORD = {"resolution": 32, "tasks": ["table_clear"], "workers": 1, "episodes_by_task": {"table_clear": 3}}


def _with_reading_stage(tmp_path: Path) -> Path:
    """The shipped recipe plus the optional reading warm-up stage (next_token then starts from it)."""
    import yaml

    doc = yaml.safe_load((PROJECT_ROOT / "configs" / "train" / "default_model.yaml").read_text())
    doc["reading"] = {"input_embedding_init_std": 1.0, "visual_codes": "digits", "data.mid_samples_per_step": 1}
    doc["quick"]["reading"] = {"optim.max_steps": 10, "optim.batch_size": 4}
    path = tmp_path / "default_model_reading.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_pipeline_exports_a_model_the_torch_backend_runs(tmp_path):
    out = tmp_path / "export"
    config = _with_reading_stage(tmp_path)
    info = run_pipeline(config, out, tmp_path / "work", quick=True, progress=False, stage_overrides=TOY_STAGES,
                        record_overrides=TOY_RECORD)
    assert not info["smoke"].get("error"), info["smoke"]
    assert json.loads((out / "guidance.json").read_text())["layout"] == "compact"
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m finetune_embodied.default_model" in card and "| dida | 2 |" in card and "| reading | 2 |" in card
    # next_token started from the reading warm-up
    assert info["stages"]["next_token"]["config"]["init_from"].startswith(str(tmp_path / "work" / "reading"))
    # the refine stages went on from the DiDA stage's exported model, over the whole recording; the export is theirs
    assert info["stages"]["refine"]["config"]["init_from"] == str(tmp_path / "work" / "dida_model")
    assert info["stages"]["refine"]["config"]["data"]["first_episodes"] == 0
    assert info["stages"]["dida"]["config"]["data"]["first_episodes"] == 2
    assert "| refine | 2 |" in card and "| refine_dida | 2 |" in card and "table_clear 3" in card
    assert json.loads((out / "guidance.json").read_text())["dida_adapted"] is True
    assert info["export"]["weights_mb"] < 20
    assert (out / "step_verifier" / "model.safetensors").is_file() and "| verifier | 2 |" in card
    assert (out / "perception" / "model.safetensors").is_file() and "| perception | 2 |" in card
    # the exported perceiver is the one with a name reader, trained alone on the perception stage's perceiver
    assert json.loads((out / "perception" / "config.json").read_text())["name_crop"] == 8 and "| perception_names | 2 |" in card
    assert info["stages"]["perception_names"]["config"]["init_from"].startswith(str(tmp_path / "work" / "perception"))
    # A second run resumes: nothing is re-recorded or re-trained.
    again = run_pipeline(config, out, tmp_path / "work", quick=True, progress=False, stage_overrides=TOY_STAGES,
                         record_overrides=TOY_RECORD)
    assert again["record"]["episodes_recorded_now"] == 3 and again["wall_s"] == info["wall_s"]


def test_vocabulary_covers_every_sim_instruction():
    import gymnasium as gym

    import sim_envs
    from emu_guide.paths import shipped_model_dir
    from model_runtime.text_tokenizer import load_text_tokenizer
    from sim_envs import fold_cloth, table_clear
    from sim_envs.seeds import seeds_for

    texts = sim_instruction_texts()
    # every fixed paraphrase of every task, and nothing else (SortBlocks' templates are filled per episode)
    assert set(texts) == {*table_clear.INSTRUCTIONS, *fold_cloth.INSTRUCTIONS_LEFT, *fold_cloth.INSTRUCTIONS_RIGHT}
    # the shipped model's word vocabulary knows every word of them...
    tok = load_text_tokenizer(shipped_model_dir() / "text_tokenizer")
    assert "flamingo" in tok.unknown_words("feed the flamingo") and "the" not in tok.unknown_words("the")  # it can fail
    assert {t: tok.unknown_words(t) for t in texts} == {t: [] for t in texts}
    # ...and of the instructions the envs actually draw (templates filled with colours and bins)
    for env_id in sim_envs.ENV_IDS:
        env = gym.make(env_id, resolution=32)
        for seed in seeds_for("heldout", 12):
            env.reset(seed=seed)
            instruction = env.unwrapped.instruction
            assert tok.unknown_words(instruction) == [], (env_id, seed, instruction)
        env.close()


def test_bad_pipeline_config(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("recrod: {}\n")
    with pytest.raises(ValueError, match="unknown sections"):
        run_pipeline(bad, tmp_path / "o", tmp_path / "w")
    assert not Path(tmp_path / "o").exists()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (PROJECT_ROOT / "configs" / "train").glob("default_model*.yaml")))
def test_every_pipeline_recipe_loads_in_every_stage(recipe, tmp_path):
    """A recipe's stage overrides are checked before hours of recording and training, not after."""
    from finetune_embodied.default_model import STAGE_CONFIGS, STAGES, _read_yaml, recipe_overrides
    from finetune_embodied.train.config import load_config

    doc = _read_yaml(PROJECT_ROOT / "configs" / "train" / recipe)
    for stage in STAGES:
        if stage not in doc:  # an optional stage the recipe leaves out
            continue
        overrides = recipe_overrides(doc, stage)  # as the pipeline passes them
        lm = [] if stage in ("tokenizer", "verifier", "perception") else [f"tokenizer={tmp_path}", "data.extra_texts=[a]"]
        init = [f"init_from={tmp_path}"] if stage in ("dida", "refine", "refine_dida") else []
        config = STAGE_CONFIGS.get(stage, stage)  # the refine stages train by next_token.yaml / dida.yaml
        cfg = load_config(PROJECT_ROOT / "configs" / "train" / f"{config}.yaml",
                          [f"checkpoint.dir={tmp_path / stage}", f"data.path={tmp_path}", *lm, *init, *overrides])
        assert cfg.stage == config and cfg.optim.max_steps == (doc[stage] or {}).get("optim.max_steps", cfg.optim.max_steps)
