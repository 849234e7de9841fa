"""The promotion gate: a ReSet model that is not at least as good as the same run's MTL model (or
the current champion, re-scored on the same held-out set) on both axes stays a challenger."""

from __future__ import annotations

import mlflow
import pytest

from reset.config import RegisterConfig
from reset.evaluation import gate, summarize
from reset.registry import champion_checkpoint, log_and_register


def _rows(arm: str, if_pass: list[bool], faith: list[float]) -> list[dict]:
    """Rows as evaluation writes them: IF prompts carry if_pass, grounded ones faithfulness."""
    rows = [{"model": arm, "example_id": f"if{i}", "kind": "instruction", "task": "open", "if_pass": p,
             "if_pass_loose": p, "if_ids": ["punctuation:no_comma"], "if_followed": [p], "if_followed_loose": [p]}
            for i, p in enumerate(if_pass)]
    rows += [{"model": arm, "example_id": f"cd{i}", "kind": "grounded", "task": "abstractive", "faithfulness": f}
             for i, f in enumerate(faith)]
    return rows


def _summary(mtl_if, mtl_f, reset_if, reset_f, reference="mtl"):
    return summarize({"mtl": _rows("mtl", mtl_if, mtl_f), "reset": _rows("reset", reset_if, reset_f)},
                     reference=reference, n_resamples=2000)


N = 40


def test_a_model_that_trails_on_one_axis_fails():
    # the case: ReSet ties on IF and trails slightly on faithfulness (0.418 vs 0.420)
    s = _summary([True] * 20 + [False] * 20, [0.42] * N, [True] * 20 + [False] * 20, [0.418] * N)
    d = gate(s, "reset")
    assert not d.passed and "faithfulness" in d.reason and "worse than MTL" in d.reason
    assert d.deltas["faithfulness"]["diff"] == pytest.approx(-0.002)
    assert "gate.vs_mtl.faithfulness" in d.tags("gate.vs_mtl")


def test_ties_pass_and_significance_can_be_required():
    same = _summary([True] * 20 + [False] * 20, [0.5] * N, [True] * 20 + [False] * 20, [0.5] * N)
    assert gate(same, "reset").passed
    d = gate(same, "reset", require_significant=True)
    assert not d.passed and "not significantly better" in d.reason
    better = _summary([False] * N, [0.3] * N, [True] * 30 + [False] * 10, [0.6] * N)
    d = gate(better, "reset", require_significant=True)
    assert d.passed and "significantly better on IF, faithfulness" in d.reason
    # a tolerance lets a small loss through
    worse = _summary([True] * 20 + [False] * 20, [0.5] * N, [True] * 19 + [False] * 21, [0.5] * N)
    assert not gate(worse, "reset").passed and gate(worse, "reset", tolerance=0.05).passed


@pytest.fixture
def store(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("gate", artifact_location=(tmp_path / "art").as_uri())
    yield exp
    mlflow.set_tracking_uri(None)


def _register(model_dir, exp, cfg, gates, description=""):
    with mlflow.start_run(experiment_id=exp):
        return log_and_register(model_dir, {"if_prompt_acc": 0.5, "faithfulness": 0.5}, cfg, max_new_tokens=4,
                                gates=gates, description=description)


def test_the_run_verdict_gates_promotion_even_without_a_champion(tiny_model_dir, store, tmp_path):
    cfg = RegisterConfig(model_name="g")
    client = mlflow.MlflowClient()
    trails = gate(_summary([True] * 20 + [False] * 20, [0.42] * N, [True] * 20 + [False] * 20, [0.418] * N), "reset")
    first = _register(tiny_model_dir, store, cfg, {"mtl": trails}, "ReSet vs MTL: ...")
    assert not first["promote"] and "stays challenger" in first["reason"]
    version = client.get_model_version("g", first["version"])
    assert version.description == "ReSet vs MTL: ..."
    assert version.tags["gate.vs_mtl.faithfulness"].startswith("-0.002")
    assert str(client.get_model_version_by_alias("g", "challenger").version) == first["version"]
    assert champion_checkpoint(cfg, tmp_path / "c") is None  # still no champion
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("g", "champion")

    passes = gate(_summary([False] * N, [0.3] * N, [True] * 30 + [False] * 10, [0.6] * N), "reset")
    second = _register(tiny_model_dir, store, cfg, {"mtl": passes})
    assert second["promote"] and "no champion yet" in second["reason"]
    assert str(client.get_model_version_by_alias("g", "champion").version) == second["version"]
    # the champion can be fetched as a model directory to re-score it on the next run's held-out set
    version, path = champion_checkpoint(cfg, tmp_path / "c")
    assert version == second["version"] and (path / "config.json").exists()
    # against that champion the next model must pass too; register.promote off leaves it to a pipeline
    third = _register(tiny_model_dir, store, cfg, {"mtl": passes, "champion": trails})
    assert not third["promote"] and "vs champion" in third["reason"]
    off = _register(tiny_model_dir, store, RegisterConfig(model_name="g", promote=False),
                    {"mtl": passes, "champion": passes})
    assert not off["promote"] and "promotion pipeline decides" in off["reason"]
    assert str(client.get_model_version_by_alias("g", "champion").version) == second["version"]
