"""Judges as configuration: which judges run, and how several judges on one axis combine."""

from __future__ import annotations

import pytest

from reset.config import ConfigError, JudgeConfig, validate
from reset.data.records import Candidate, Example
from reset.judging import AxisScore, build_judges, judge


class Fixed:
    """A stand-in judge returning fixed scores (the real judges are tested elsewhere)."""

    def __init__(self, name: str, axis: str, value: float | None) -> None:
        self.name, self.axis, self.value = name, axis, value

    def score(self, pairs):
        return [AxisScore(self.value, f"fixed {self.value}") for _ in pairs]


EX = Example(id="e", source="s", kind="grounded", instruction="Q?", response="A.", context="A is here.")
CAND = Candidate(id="e/0", example_id="e", text="A.")


def test_judges_on_one_axis_average_with_their_weights():
    judges = [Fixed("a", "faithfulness", 0.2), Fixed("b", "faithfulness", 1.0), Fixed("t", "task", 0.5)]
    [j] = judge([EX], [CAND], {"faithfulness": 1.0, "task": 1.0}, judges, {"a": 1.0, "b": 3.0})
    assert j.scores["faithfulness"] == pytest.approx((0.2 * 1 + 1.0 * 3) / 4)
    assert j.scores["instruction"] is None
    assert j.combined == pytest.approx((0.8 + 0.5) / 2)
    assert j.details["by_judge"] == {"a": 0.2, "b": 1.0, "t": 0.5}


def test_a_judge_that_does_not_apply_or_weighs_zero_is_left_out():
    judges = [Fixed("a", "faithfulness", None), Fixed("b", "faithfulness", 0.4), Fixed("c", "faithfulness", 0.0)]
    [j] = judge([EX], [CAND], {"faithfulness": 1.0}, judges, {"c": 0.0})
    assert j.scores["faithfulness"] == pytest.approx(0.4)


def test_default_judges_are_offline():
    judges = build_judges(JudgeConfig())
    assert [(j.name, j.axis) for j in judges] == [("rules", "instruction"), ("k-precision", "faithfulness"),
                                                  ("reference", "task")]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"judges": ["rules", "oracle"]}, "judge.judges[1]"),
        ({"judges": ["rules", "rules"]}, "judge.judges"),
        ({"judges": []}, "judge.judges"),
        ({"judge_weights": {"nli": 1.0}}, "judge.judge_weights.nli"),
        ({"judges": ["rules", "nli"]}, "judge.nli_model"),
        ({"judges": ["llm-instruction"]}, "judge.llm.model"),
        ({"judge_weights": {"rules": -1.0}}, "judge.judge_weights.rules"),
    ],
)
def test_bad_judge_config_names_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        validate(JudgeConfig, data, "judge")


def test_embedding_judge_is_built_from_config_and_scores_grounding():
    [emb] = build_judges(JudgeConfig(judges=["embedding"]))
    assert (emb.name, emb.axis) == ("embedding", "faithfulness")
    ctx = "The mill on the Alder River was built in 1820. It ground wheat for the whole valley."
    ex = Example(id="m", source="s", kind="grounded", instruction="When was the mill built?", response="-",
                 context=ctx)
    good = Candidate(id="m/0", example_id="m", text="The mill was built in 1820.")
    bad = Candidate(id="m/1", example_id="m", text="Bananas are rich in potassium.")
    g, b = emb.score([(ex, good), (ex, bad)])
    assert g.score > b.score + 0.3


def test_nli_judge_needs_an_existing_model(tmp_path):
    from reset.errors import ModelError

    with pytest.raises(ModelError, match="no-nli-here"):
        build_judges(JudgeConfig(judges=["nli"], nli_model=str(tmp_path / "no-nli-here")))


def test_a_failed_judgment_fails_the_step_instead_of_passing_as_not_applicable():
    from reset.judging import JudgeError
    from reset.judging.llm import LLMAxisScore

    class Broken(Fixed):
        def score(self, pairs):
            return [LLMAxisScore(None, "LLM judge error: HTTP 500", error="HTTP 500") for _ in pairs]

    with pytest.raises(JudgeError, match="1 of 2 judgments failed.*HTTP 500"):
        judge([EX], [CAND], {"faithfulness": 1.0}, [Fixed("k", "faithfulness", 1.0), Broken("llm", "faithfulness", 0)])


def test_llm_judge_settings_are_validated_with_the_judge_section():
    ok = {"judges": ["llm-faithfulness", "reference"], "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}
    validate(JudgeConfig, ok, "judge")
    with pytest.raises(ConfigError, match=r"judge\.llm\.concurrency"):
        validate(JudgeConfig, {**ok, "llm": {**ok["llm"], "concurrency": 0}}, "judge")
    with pytest.raises(ConfigError, match=r"judge\.llm\.api_key_env"):
        validate(JudgeConfig, {**ok, "llm": {**ok["llm"], "api_key_env": "sk-live-abc123"}}, "judge")
    with pytest.raises(ConfigError, match=r"judge\.llm\.base_url"):
        validate(JudgeConfig, {**ok, "llm": {"model": "m"}}, "judge")
