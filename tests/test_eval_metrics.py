"""Per-example evaluation measures on the demo data: what copying games and what it cannot."""

from __future__ import annotations

import pytest

from reset.evaluation.metrics import (
    METRICS,
    family_metrics,
    metrics_for,
    point_metrics,
    score_example,
)
from reset.judging.lexical import COPY_LIMIT, contains_span, normalize_tokens, passage_copy


def _extractive(demo, counterfactual: bool):
    return [e for e in demo[1] if e.task == "extractive" and bool(e.meta.get("counterfactual")) == counterfactual]


def _wrong_sentence(ex) -> str:
    """A sentence of the passage that does not state the answer."""
    answer = normalize_tokens(ex.meta["answer"])
    return next(s for s in ex.context.split(". ") if not contains_span(normalize_tokens(s), answer))


def test_answer_correctness_rewards_the_answer_not_copying(demo):
    exs = _extractive(demo, False) + _extractive(demo, True)
    assert len(exs) >= 10
    for ex in exs:
        right = score_example(ex, ex.response)
        assert right["answer_correct"] is True and right["answer_f1"] == pytest.approx(1.0)
        whole = score_example(ex, ex.context)  # the whole passage: it contains the answer ...
        assert whole["answer_in_response"] is True and whole["passage_copy"] == pytest.approx(1.0)
        assert whole["answer_correct"] is False and whole["faithfulness"] == 0.0  # ... but answers nothing
        assert whole["k_precision"] == pytest.approx(1.0)  # K-Precision is fooled
        assert whole["answer_f1"] < 0.5
        wrong = score_example(ex, _wrong_sentence(ex))  # a copied sentence that does not answer
        assert wrong["answer_correct"] is False and wrong["faithfulness"] == 0.0
        assert wrong["k_precision"] == pytest.approx(1.0)  # again fooled
        assert wrong["passage_copy"] < COPY_LIMIT


def test_counterfactual_outcomes_tell_passage_from_memory(demo):
    exs = _extractive(demo, True)
    assert exs
    for ex in exs:
        memory = ex.response.replace(ex.meta["answer"], ex.meta["memory_answer"])
        assert score_example(ex, ex.response)["cf_outcome"] == "passage"
        r = score_example(ex, memory)
        assert r["cf_outcome"] == "memory" and r["answer_correct"] is False
        hedge = f"{ex.response} Some say {ex.meta['memory_answer']}."
        assert score_example(ex, hedge)["cf_outcome"] == "both"
        assert score_example(ex, "I do not know.")["cf_outcome"] == "neither"
        assert score_example(ex, ex.context)["cf_outcome"] == "copy"
    rows = [score_example(ex, ex.response) for ex in exs[: len(exs) // 2]]
    rows += [score_example(ex, ex.response.replace(ex.meta["answer"], ex.meta["memory_answer"]))
             for ex in exs[len(exs) // 2:]]
    m = point_metrics(rows)
    assert m["counterfactual_rate"] == pytest.approx((len(exs) // 2) / len(exs))
    assert m["memory_rate"] == pytest.approx(1 - m["counterfactual_rate"])
    assert m["n_counterfactual"] == len(exs)
    # a non-counterfactual passage has no counterfactual outcome
    assert score_example(_extractive(demo, False)[0], "x")["cf_outcome"] is None


def test_abstractive_measures(demo):
    ex = next(e for e in demo[1] if e.task == "abstractive")
    good = score_example(ex, ex.response)
    assert good["key_facts"] == pytest.approx(1.0) and good["rouge_l"] == pytest.approx(1.0)
    off = score_example(ex, "The weather was nice and everyone went home.")
    assert off["key_facts"] == 0.0 and off["rouge_l"] < 0.3
    copy = score_example(ex, ex.context)
    assert copy["rouge_l"] < good["rouge_l"] and copy["k_precision"] == pytest.approx(1.0)
    assert copy["answer_correct"] is None and copy["answer_f1"] is None


def test_token_span_matching_and_copy_share():
    assert contains_span(["the", "heart", "has", "six"], ["has", "six"])
    assert not contains_span(["sixteen", "chambers"], ["six"])  # whole tokens, not substrings
    assert not contains_span(["a"], [])
    assert passage_copy("Ada wrote it.", "Ada wrote it. Then she left.") == pytest.approx(3 / 6)
    assert passage_copy("anything", "") == 0.0


def test_if_rows_and_families_pair_by_instruction(demo):
    ex = next(e for e in demo[0] if len(e.constraints) == 2)
    row = score_example(ex, ex.response)
    assert row["if_pass"] is True and row["if_followed"] == [True, True] and len(row["if_ids"]) == 2
    bad = score_example(ex, "")
    assert bad["if_pass"] is False and bad["if_followed"] == [False, False]
    fams = family_metrics([row])
    assert {m.key for m in fams} == {f"if_family.{c['id'].split(':')[0]}" for c in ex.constraints}
    values = fams[0].values([bad])
    assert all(k.startswith(f"{ex.id}#") for k in values)  # units: the example's instructions
    ids = family_metrics([row], level="id")
    assert {m.key for m in ids} == {f"if_id.{c['id']}" for c in ex.constraints}


def test_metric_specs_are_unique_and_built_from_rows(demo):
    keys = [m.key for m in METRICS]
    assert len(keys) == len(set(keys))
    rows = [score_example(e, e.response) for e in demo[0][:5] + demo[1][:5]]
    rows[0]["judge.nli"] = 0.5  # a faithfulness judge's column: reported per task, and shared by faithfulness
    specs = {m.key: m for m in metrics_for(rows)}
    assert "judge.nli.extractive" in specs and "nli" in specs["faithfulness"].shared_with
    assert specs["if_prompt_acc"].shared_with == ("rules",)
