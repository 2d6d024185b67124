from pathlib import Path

import pytest
import yaml

from loraship.training.config import (
    CONFIGS_DIR,
    DEFAULT_CONFIG,
    TrainConfig,
    TrainConfigError,
    config_from_dict,
    load_config,
)

CONFIG_FILES = sorted(CONFIGS_DIR.rglob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_there_is_a_default_config():
    assert DEFAULT_CONFIG in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_every_config_file_validates(path):
    text = path.read_text()
    assert text.startswith("# Run:") and "loraship train --config" in text.splitlines()[0]
    cfg = load_config(path)
    assert Path(cfg.data.path).is_file()


def test_default_config_keeps_the_tutorial_split():
    cfg = load_config(DEFAULT_CONFIG)
    assert (cfg.data.test_size, cfg.data.seed) == (14, 0)
    assert cfg.model.path == "default"


def test_all_problems_are_reported_at_once_with_their_keys(tmp_path):
    path = write(
        tmp_path,
        """
lr: 0.1
model: {path: 3, precision: fp8}
lora: {r: "8", rank: 4}
train: {epochs: 1.5, batch_size: true}
optim: {betas: [0.9, "x"]}
""",
    )
    with pytest.raises(TrainConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "8 problem(s)" in msg
    for key in (
        "  - lr: unknown key",
        "model.path: must be a string, got 3",
        "model.precision: must be one of fp32, bf16-mixed, fp16-mixed, got 'fp8'",
        "lora.r: must be an integer, got '8'",
        "lora.rank: unknown key",
        "train.epochs: must be an integer, got 1.5",
        "train.batch_size: must be an integer, got True",
        "optim.betas.1: must be a number, got 'x'",
    ):
        assert key in msg


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["lora.r=0"], "lora.r: must be >= 1"),
        (["lora.dropout=1.0"], "lora.dropout: must be in [0, 1)"),
        (["lora.target_modules=[]"], "lora.target_modules: an empty list"),
        (["data.test_size=1.5"], "data.test_size: a fraction must be in (0, 1)"),
        (["data.test_size=0"], "data.test_size: a row count must be >= 1"),
        (["data.columns={instruction: q}"], "data.columns: needs a column for 'response'"),
        (["data.columns={instruction: 0, response: 1, answer: 2}"], "data.columns: unknown field(s) answer"),
        (["optim.betas=[0.9]"], "optim.betas: needs two values"),
        (["optim.lr=0"], "optim.lr: must be > 0"),
        (["train.batch_size=0"], "train.batch_size: must be >= 1"),
        (["train.max_steps=0"], "train.max_steps: must be >= 1 or null"),
        (["train.checkpoint_every=-1"], "train.checkpoint_every: must be >= 0"),
        (["nope.x=1"], "nope: unknown key"),
        (["train=3"], "train: must be a mapping, got int"),
        (["train.max_steps"], "--set takes KEY=VALUE"),
    ],
)
def test_value_rules(overrides, problem):
    with pytest.raises(TrainConfigError, match="problem") as err:
        load_config(DEFAULT_CONFIG, overrides)
    assert problem in str(err.value)


def test_overrides_are_typed_by_yaml(tmp_path):
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "train.max_steps=5",
            "optim.lr=1e-3",
            "model.gradient_checkpointing=true",
            "lora.target_modules=[q_proj, v_proj]",
            "lora.alpha=8",
        ],
    )
    assert cfg.train.max_steps == 5 and cfg.optim.lr == 1e-3 and cfg.model.gradient_checkpointing is True
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)


def test_data_path_is_relative_to_the_file_but_an_override_to_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data: {path: rows.jsonl}\n")
    assert load_config(path).data.path == str(tmp_path / "sub" / "rows.jsonl")
    monkeypatch.chdir(tmp_path)
    assert load_config(path, ["data.path=other.jsonl"]).data.path == str(tmp_path / "other.jsonl")


def test_empty_file_gives_the_defaults_and_a_list_is_rejected(tmp_path):
    assert load_config(write(tmp_path, "")).train == TrainConfig().train
    with pytest.raises(TrainConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n"))


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(DEFAULT_CONFIG)
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
