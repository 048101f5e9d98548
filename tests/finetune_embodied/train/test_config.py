from __future__ import annotations

import json

import pytest

from finetune_embodied.train.config import ConfigError, load_config


def test_defaults_are_valid():
    cfg = load_config(None, ["data.source=synthetic"])
    assert cfg.stage == "next_token" and cfg.optim.lr > 0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("stage=pretrain", "'pretrain'"),
        ("optim.lr=-1", "-1"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("optim.max_steps=2.5", "2.5"),
        ("optim.lr=fast", "'fast'"),
        ("data.heldout_fraction=1.5", "1.5"),
        ("data.name_radius=5", "data.name_radius"),
        ("dida.noise=gaussian", "'gaussian'"),
        ("precision=fp16", "'fp16'"),
        ("optim.lrr=1", "lrr"),
        ("bogus=1", "bogus"),
    ],
)
def test_bad_values_are_quoted(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.source=synthetic", override])
    assert fragment in str(err.value)


def test_dataset_source_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_config(None, [])


def test_lora_refused_for_tokenizer_stage():
    with pytest.raises(ConfigError, match="lora"):
        load_config(None, ["stage=tokenizer", "data.source=synthetic", "lora.enabled=true"])


def test_yaml_and_json_files_with_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("stage: dida\ndata:\n  source: synthetic\noptim:\n  lr: 3e-4\n  max_steps: 7\n")
    cfg = load_config(y, ["optim.max_steps=9", "dida.noise=uniform"])
    assert (cfg.stage, cfg.optim.lr, cfg.optim.max_steps, cfg.dida.noise) == ("dida", 3e-4, 9, "uniform")
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"stage": "tokenizer", "data": {"source": "synthetic"}}))
    assert load_config(j).stage == "tokenizer"


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)
    code = tmp_path / "code.yaml"
    code.write_text("stage: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses Python tags
        load_config(code)
