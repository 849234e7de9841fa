"""Typed configuration: the shipped configs load, every error names the file and the key path,
and `--set` overrides are applied before validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reset.config import (
    ConfigError,
    DataSource,
    PipelineConfig,
    SelectConfig,
    load_config,
    section,
)

REPO = Path(__file__).resolve().parent.parent


def _cfg(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return str(err.value)


# ------------------------------------------------------------------------------- shipped configs
def test_demo_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert isinstance(cfg, PipelineConfig)
    assert cfg.data.instruction == [DataSource(path="builtin:demo-instruction"),
                                    DataSource(path="builtin:demo-instruction", split="test", seed=2026)]
    assert cfg.data.grounded == [DataSource(path="builtin:demo-grounded"),
                                 DataSource(path="builtin:demo-grounded", split="test", seed=2026)]
    assert cfg.data.train_size == 240 and isinstance(cfg.data.train_size, int)
    assert cfg.data.eval_count("instruction") == 400 and cfg.data.eval_count("grounded") == 200
    assert cfg.data.dev_count("instruction") == 200 and cfg.data.dev_count("grounded") == 100
    assert cfg.train.learning_rate == pytest.approx(1e-3)  # written 1e-3 in the file: YAML reads a string
    assert isinstance(cfg.train.epochs, float)
    assert [(d.temperature, d.top_p) for d in cfg.generate.grid] == [(0.7, 0.95), (1.0, 0.95)]
    assert cfg.select.mode == "reset" and cfg.select.min_selected == 8 and cfg.select.gate_answer_correct
    assert cfg.tracking.tracking_uri == ""


def test_tiny_config_loads_and_keeps_defaults_for_missing_keys() -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    assert cfg.model.base == "builtin:tiny-llama"
    assert cfg.generate.include_reference is True
    assert cfg.select.threshold == 0.0
    # not in the file: dataclass defaults
    assert cfg.select.strict_threshold == SelectConfig().strict_threshold
    assert cfg.judge.weights == {"instruction": 1.0, "faithfulness": 1.0, "task": 1.0}
    assert cfg.continued_train.learning_rate == 1e-3


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_cfg(tmp_path, "")) == PipelineConfig()
    # a section present but empty (null) is the defaults too
    assert load_config(_cfg(tmp_path, "train:\n")) == PipelineConfig()


# -------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"train": {"learnin_rate": 0.1}}, "train.learnin_rate", ["unknown key"]),
        ({"trian": {"epochs": 1}}, "trian", ["unknown key"]),
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate", ["valid number", "'fast'"]),
        ({"train": {"batch_size": 2.5}}, "train.batch_size", ["valid integer", "fractional"]),
        ({"train": {"batch_size": True}}, "train.batch_size", ["expected a number, got true"]),
        ({"train": {"batch_size": 0}}, "train.batch_size", ["greater than 0"]),
        ({"train": {"target_modules": "q_proj"}}, "train.target_modules", ["valid list"]),
        ({"train": "fast"}, "train", ["valid dictionary"]),
        ({"generate": {"include_reference": "yes please"}}, "generate.include_reference", ["valid boolean"]),
        ({"select": {"threshold": 1.5}}, "select.threshold", ["1.5", "less than or equal to 1"]),
        ({"select": {"top_fraction": 0}}, "select.top_fraction", ["greater than 0"]),
        ({"data": {"instruction_fraction": -0.1}}, "data.instruction_fraction", ["-0.1", "greater than or equal"]),
        ({"data": {"eval_per_kind": 0}}, "data.eval_per_kind", ["greater than 0"]),
        ({"data": {"instruction": [], "grounded": []}}, "data", ["at least one"]),
        ({"data": {"instruction": [{"limit": 3}]}}, "data.instruction[0].path", ["required"]),
        ({"data": {"instruction": [{"path": "a.jsonl", "limit": "all"}]}}, "data.instruction[0].limit",
         ["valid integer"]),
        ({"select": {"mode": "best"}}, "select.mode", ["'best'", "reset-s"]),
        ({"generate": {"grid": []}}, "generate.grid", ["at least 1 item"]),
        ({"generate": {"grid": [{"temperature": 0.5, "top_p": 0}]}}, "generate.grid[0].top_p", ["greater than 0"]),
        ({"generate": {"grid": [{"temperature": 0.5}, {"temprature": 1}]}}, "generate.grid[1].temprature",
         ["unknown key"]),
        ({"judge": {"weights": {"fluency": 1.0}}}, "judge.weights.fluency", ["unknown axis"]),
        ({"judge": {"weights": {"task": -1.0}}}, "judge.weights.task", ["greater than or equal to 0"]),
        ({"judge": {"weights": {"instruction": 0, "faithfulness": 0, "task": 0}}}, "judge.weights",
         ["at least one weight"]),
        ({"register": {"champion_alias": "challenger"}}, "register.champion_alias", ["differ"]),
        ({"cluster": {"cache_steps": ["mix", "train"]}}, "cluster.cache_steps[1]", ["'train'"]),
        ({"train": {"learning_rate": "1e-3x"}}, "train.learning_rate", ["valid number"]),
    ],
)
def test_errors_name_file_and_key_path(tmp_path: Path, data: dict, key: str, words: list[str]) -> None:
    path = _cfg(tmp_path, data)
    msg = _error(path)
    assert msg.startswith(f"{path}: {key}: "), msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("uri", ["http://user:s3cr3t@mlflow:5000", "https://tok3n@host/path", "user:s3cr3t@host",
                                 "https://mlflow.example.com/?token=s3cr3t", "http://h:5000/api?x=1&api_key=s3cr3t",
                                 "https://h/p?sig=tok3n"])
def test_tracking_uri_with_credentials_is_refused(tmp_path: Path, uri: str) -> None:
    msg = _error(_cfg(tmp_path, {"tracking": {"tracking_uri": uri}}))
    assert "tracking.tracking_uri: holds credentials" in msg
    assert "MLFLOW_TRACKING_USERNAME" in msg
    # the secret itself is not echoed back into logs
    assert "s3cr3t" not in msg and "tok3n" not in msg


@pytest.mark.parametrize("uri", ["", "http://mlflow:5000", "https://host/ns/a@b", "file:///tmp/mlruns", "databricks"])
def test_tracking_uri_without_credentials_is_accepted(tmp_path: Path, uri: str) -> None:
    assert load_config(_cfg(tmp_path, {"tracking": {"tracking_uri": uri}})).tracking.tracking_uri == uri


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = _error(path)
    assert str(path) in msg and "not found" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    path = _cfg(tmp_path, "train:\n  epochs: [1, 2\n  lr: 3\n")
    msg = _error(path)
    assert str(path) in msg and "not valid YAML" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path, "- a\n- b\n"))
    assert "expected a mapping" in msg


# ------------------------------------------------------------------------------------ overrides
def test_overrides_are_applied_and_typed() -> None:
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        ["train.epochs=3", "select.mode=reset-s", "data.instruction=[a.jsonl, s3://b/k.jsonl]",
         "judge.weights={task: 2}", "generate.include_reference=true", "tracking.run_name=x=y"],
    )
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert cfg.select.mode == "reset-s"
    assert cfg.data.instruction == [DataSource(path="a.jsonl"), DataSource(path="s3://b/k.jsonl")]
    assert cfg.judge.weights == {"task": 2.0}
    assert cfg.generate.include_reference is True
    assert cfg.tracking.run_name == "x=y"  # only the first '=' splits
    # the rest of the file is untouched
    assert cfg.train.learning_rate == pytest.approx(1e-3) and cfg.data.train_size == 240


def test_override_adds_a_section_missing_from_the_file(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, {"train": {"epochs": 1}}), ["evaluate.batch_size=4"])
    assert cfg.evaluate.batch_size == 4


def test_override_errors_name_the_key(tmp_path: Path) -> None:
    path = _cfg(tmp_path, {})
    assert _error(path, ["train.epochs=abc"]).startswith(f"{path}: train.epochs: Input should be a valid number")
    assert _error(path, ["select.threshold=2"]).startswith(f"{path}: select.threshold:")
    assert _error(path, ["train.learnin_rate=0.1"]).startswith(f"{path}: train.learnin_rate: unknown key")
    assert "expected section.key=value" in _error(path, ["train.epochs"])
    assert "not a section" in _error(_cfg(tmp_path, {"train": {"epochs": 1}}), ["train.epochs.x=1"])


def test_override_into_an_empty_section(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, "train:\n"), ["train.epochs=3"])
    assert cfg.train.epochs == 3.0


# -------------------------------------------------------------------------------- data sources
def test_data_source_as_string_or_mapping(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, {"data": {
        "instruction": ["if.jsonl", {"path": "s3://bucket/more.jsonl", "limit": 50}],
        "grounded": ["builtin:demo-grounded"],
    }}))
    assert cfg.data.instruction == [DataSource(path="if.jsonl"), DataSource(path="s3://bucket/more.jsonl", limit=50)]
    assert cfg.data.grounded == [DataSource(path="builtin:demo-grounded")]


def test_section_parses_a_component_parameter() -> None:
    sel = section(SelectConfig, {"mode": "reset-s", "top_fraction": 0.5}, "select")
    assert sel == SelectConfig(mode="reset-s", top_fraction=0.5)
    assert section(SelectConfig, None, "select") == SelectConfig()
    with pytest.raises(ConfigError, match=r"^select\.mode: "):
        section(SelectConfig, {"mode": "best"}, "select")


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_numbers_are_refused_by_key(tmp_path: Path, value: str) -> None:
    path = _cfg(tmp_path, "train:\n  epochs: 1\n")
    for key in ("train.batch_size", "train.learning_rate"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(path, [f"{key}={value}"])


def test_a_top_level_list_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _cfg(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path, ["train.epochs=3"])


def test_numbers_people_write_every_day_load(tmp_path: Path) -> None:
    """PyYAML reads `1e-3` (no dot) as a string; it is a number here."""
    cfg = load_config(_cfg(tmp_path, "train:\n  learning_rate: 1e-3\ncontinued_train:\n  learning_rate: 5E-5\n"))
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.continued_train.learning_rate == pytest.approx(5e-5)
    assert load_config(_cfg(tmp_path, {}), ["train.learning_rate=2e-4"]).train.learning_rate == pytest.approx(2e-4)


def test_every_shipped_config_validates() -> None:
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        assert isinstance(load_config(path), PipelineConfig), path


def test_several_bad_keys_are_all_named(tmp_path: Path) -> None:
    path = _cfg(tmp_path, {"train": {"batch_size": 0, "learning_rate": "fast"}, "select": {"mode": "x"}})
    lines = _error(path).splitlines()
    assert {line.split(": ")[1] for line in lines} == {"train.batch_size", "train.learning_rate", "select.mode"}
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_json_schema_describes_every_field() -> None:
    from reset.config import json_schema

    schema = json_schema()
    train = schema["$defs"]["TrainConfig"]
    assert train["additionalProperties"] is False
    assert train["properties"]["learning_rate"]["exclusiveMinimum"] == 0
    assert "warmup" in train["properties"]["learning_rate"]["description"]
    for name, model in schema["$defs"].items():
        for field, spec in model["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_min_selected_must_leave_something_to_train_on(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"select\.min_selected"):
        load_config(_cfg(tmp_path, "select:\n  min_selected: 0\n"))


def test_a_config_can_extend_another(tmp_path: Path) -> None:
    base = _cfg(tmp_path, {"train": {"epochs": 2, "learning_rate": 0.001}, "select": {"mode": "reset-s"}})
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {base.name}\ntrain:\n  epochs: 3\n")
    cfg = load_config(child)
    assert cfg.train.epochs == 3.0 and cfg.train.learning_rate == pytest.approx(0.001)  # key by key
    assert cfg.select.mode == "reset-s"
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    assert "extends itself" in _error(loop)
    missing = tmp_path / "missing.yaml"
    missing.write_text("extends: nope.yaml\n")
    assert "nope.yaml: config file not found" in _error(missing)
