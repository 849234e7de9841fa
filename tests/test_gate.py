"""The promotion gate (reset.evaluation.gate / decision, reset.registry): non-inferiority on both
axes with margins, superiority on at least one (Holm), identical answers or weights never pass,
alpha spent over the uses of one test split (counted in the registry), and the registry acting on
the gates only (stored figures from other runs are never compared). Error rates by simulation:
tests/test_power.py."""

from __future__ import annotations

import mlflow
import pytest

from reset.config import RegisterConfig
from reset.evaluation import gate, summarize
from reset.evaluation.decision import rules_from_config, run_decision
from reset.evaluation.gate import GateRule
from reset.registry import champion_checkpoint, log_and_register, reserve_test_use


def _rows(arm: str, if_pass: list[bool], faith: list[float], answers: list[str] | None = None) -> list[dict]:
    """Rows as evaluation writes them: IF prompts carry if_pass, grounded ones faithfulness."""
    rows = [{"model": arm, "example_id": f"if{i}", "kind": "instruction", "task": "open", "if_pass": p,
             "if_pass_loose": p, "if_ids": ["punctuation:no_comma"], "if_followed": [p], "if_followed_loose": [p]}
            for i, p in enumerate(if_pass)]
    rows += [{"model": arm, "example_id": f"cd{i}", "kind": "grounded", "task": "abstractive", "faithfulness": f}
             for i, f in enumerate(faith)]
    for i, r in enumerate(rows):
        r["response"] = answers[i] if answers else f"{arm} answer {i}"
    return rows


def _summary(mtl_if, mtl_f, reset_if, reset_f, reference="mtl"):
    return summarize({"mtl": _rows("mtl", mtl_if, mtl_f), "reset": _rows("reset", reset_if, reset_f)},
                     reference=reference, n_resamples=2000)


N = 200
HALF = [True] * (N // 2) + [False] * (N // 2)


def _shifted(flags: list[bool], up: int, down: int) -> list[bool]:
    """`flags` with `up` failures turned into passes and `down` passes into failures."""
    out = list(flags)
    fails = [i for i, f in enumerate(out) if not f][:up]
    passes = [i for i, f in enumerate(out) if f][:down]
    for i in fails:
        out[i] = True
    for i in passes:
        out[i] = False
    return out


def _faith(mean: float, spread: float = 0.1) -> list[float]:
    return [min(1.0, max(0.0, mean + spread * ((i % 7) - 3) / 3)) for i in range(N)]


def test_a_clear_gain_passes_and_the_reason_states_the_rule():
    s = _summary(HALF, _faith(0.5), _shifted(HALF, 30, 2), _faith(0.6))
    d = gate(s, "reset")
    assert d.passed, d.reason
    assert d.reason.startswith("non-inferior to MTL on both axes (margins 0.03 / 0.03), superior on IF (Holm p=")
    assert "faithfulness (Holm p=" in d.reason
    assert d.deltas["if_prompt_acc"]["noninferior"] and d.deltas["faithfulness"]["superior"]
    assert "gate.vs_mtl.faithfulness" in d.tags("gate.vs_mtl")


def test_a_tie_no_longer_passes():
    # equal pass rates and equal faithfulness, different answers: non-inferior, but not superior
    s = _summary(HALF, _faith(0.5), _shifted(HALF, 1, 1), _faith(0.5))
    d = gate(s, "reset")
    assert not d.passed and "but not superior on either" in d.reason
    assert gate(s, "reset", GateRule(superiority=False)).passed  # non-inferiority alone would pass it


def test_a_loss_beyond_the_margin_fails_naming_the_axis_and_the_bound():
    s = _summary(HALF, _faith(0.5), _shifted(HALF, 40, 2), _faith(0.44))
    d = gate(s, "reset")
    assert not d.passed and "not shown non-inferior to MTL on faithfulness (lower bound -0." in d.reason
    assert not d.deltas["faithfulness"]["noninferior"] and d.deltas["if_prompt_acc"]["noninferior"]
    # a wider margin lets it through (superior on IF)
    assert gate(s, "reset", GateRule(margins={"if_prompt_acc": 0.03, "faithfulness": 0.15})).passed


def test_identical_answers_or_weights_never_pass_and_the_reason_says_so():
    same_answers = [f"answer {i}" for i in range(2 * N)]
    rows = {"mtl": _rows("mtl", HALF, _faith(0.5), same_answers),
            "reset": _rows("reset", HALF, _faith(0.5), same_answers)}
    v = run_decision(rows, rules=rules_from_config(RegisterConfig(require_superiority=False)))
    assert not v.gates["mtl"].passed
    assert v.gates["mtl"].reason == ("answers byte-identical to MTL's on all 400 test prompts: the candidate cannot "
                                     "differ from it")
    assert v.identical["reset"] == (400, 400)
    # equal weights: never, even when the answers differ (a nondeterministic engine)
    better = {"mtl": _rows("mtl", HALF, _faith(0.5)), "reset": _rows("reset", _shifted(HALF, 40, 0), _faith(0.7))}
    v = run_decision(better, same_weights={"mtl": True})
    assert not v.gates["mtl"].passed and "weights identical to MTL's" in v.gates["mtl"].reason
    assert run_decision(better).gates["mtl"].passed


def test_alpha_is_spent_over_the_uses_of_one_test_split():
    s = _summary(HALF, _faith(0.5), _shifted(HALF, 14, 2), _faith(0.5))  # a modest IF gain
    first = gate(s, "reset", GateRule(use=1))
    tenth = gate(s, "reset", GateRule(use=10))
    assert first.passed and not tenth.passed
    assert tenth.deltas["if_prompt_acc"]["confidence"] > first.deltas["if_prompt_acc"]["confidence"]
    assert "use 10 of this test split" in tenth.reason
    assert gate(s, "reset", GateRule(use=10, spending=False)).passed


def test_the_champion_is_gated_on_the_same_split_with_its_own_rule():
    rows = {"mtl": _rows("mtl", HALF, _faith(0.5)), "reset": _rows("reset", _shifted(HALF, 30, 0), _faith(0.62)),
            "champion": _rows("champion", _shifted(HALF, 30, 0), _faith(0.62))}
    v = run_decision(rows, labels={"champion": "champion v3"})
    assert set(v.gates) == {"mtl", "champion"}
    assert v.gates["mtl"].passed and v.gates["champion"].passed  # non-inferior to the champion is enough
    assert v.gates["champion"].reason.startswith("non-inferior to champion v3 on both axes")
    assert v.lines[0].startswith("ReSet vs MTL: IF +0.150 [") and any("vs champion v3" in x for x in v.lines)
    strict = run_decision(rows, rules=rules_from_config(RegisterConfig(champion_superiority=True)))
    assert not strict.gates["champion"].passed


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


def test_the_registry_acts_on_the_gates_only(tiny_model_dir, store, tmp_path):
    cfg = RegisterConfig(model_name="g")
    client = mlflow.MlflowClient()
    fails = gate(_summary(HALF, _faith(0.5), _shifted(HALF, 1, 1), _faith(0.5)), "reset")
    first = _register(tiny_model_dir, store, cfg, {"mtl": fails}, "ReSet vs MTL: ...")
    assert not first["promote"] and first["reason"].endswith(": stays challenger, NOT promoted")
    assert "not superior on either" in first["reason"]
    version = client.get_model_version("g", first["version"])
    assert version.description == "ReSet vs MTL: ..."
    assert str(client.get_model_version_by_alias("g", "challenger").version) == first["version"]
    assert champion_checkpoint(cfg, tmp_path / "c") is None  # still no champion

    passes = gate(_summary(HALF, _faith(0.5), _shifted(HALF, 30, 0), _faith(0.6)), "reset")
    second = _register(tiny_model_dir, store, cfg, {"mtl": passes})
    assert second["promote"] and second["reason"].startswith("no champion yet; non-inferior to MTL")
    assert second["reason"].endswith(": promoted to @champion")
    assert str(client.get_model_version_by_alias("g", "champion").version) == second["version"]
    version, path = champion_checkpoint(cfg, tmp_path / "c")
    assert version == second["version"] and (path / "config.json").exists()
    # against that champion the next model must pass too; register.promote off leaves it to a pipeline
    third = _register(tiny_model_dir, store, cfg, {"mtl": passes, "champion": fails})
    assert not third["promote"]
    off = _register(tiny_model_dir, store, RegisterConfig(model_name="g", promote=False),
                    {"mtl": passes, "champion": passes})
    assert not off["promote"] and "promotion pipeline decides" in off["reason"]
    # no paired evaluation: never promoted, whatever stored figures say (they are not compared)
    none = _register(tiny_model_dir, store, cfg, None)
    assert not none["promote"] and "no paired evaluation" in none["reason"]
    assert str(client.get_model_version_by_alias("g", "champion").version) == second["version"]


def test_each_use_of_a_test_split_is_counted_per_digest(store):
    cfg = RegisterConfig(model_name="uses")
    assert [reserve_test_use(cfg, "a" * 64, holder="t") for _ in range(3)] == [1, 2, 3]
    assert reserve_test_use(cfg, "b" * 64, holder="t") == 1  # a fresh test split starts again
    tags = mlflow.MlflowClient().get_registered_model("uses").tags
    assert tags["reset.test_uses." + "a" * 16] == "3" and tags["reset.test_uses." + "b" * 16] == "1"
