"""Judging (three axes, weighted combination) and reject sampling (ReSet / ReSet-S)."""

from __future__ import annotations

import math

import pytest

from reset.config import SelectConfig
from reset.data.records import Candidate, Example, Judgment
from reset.judging import combine, default_judges, judge
from reset.selection import SelectionError, select

EQUAL = {"instruction": 1.0, "faithfulness": 1.0, "task": 1.0}
# Constraints a lowercase copy of a response still follows (or fails) exactly as the original does.
CASE_BLIND = {"length_constraints:number_words", "length_constraints:number_sentences",
              "detectable_format:number_bullet_lists", "punctuation:no_comma"}


def _judge1(ex: Example, text: str, weights=EQUAL) -> Judgment:
    (j,) = judge([ex], [Candidate(f"{ex.id}-c", ex.id, text)], weights, default_judges())
    return j


# ---------------------------------------------------------------------------------------- combine
def test_combine_is_a_weighted_mean_over_applicable_axes() -> None:
    scores = {"instruction": 0.5, "faithfulness": None, "task": 1.0}
    assert combine(scores, EQUAL) == pytest.approx(0.75)
    assert combine(scores, {"instruction": 3.0, "faithfulness": 5.0, "task": 1.0}) == pytest.approx(2.5 / 4)
    assert combine({"instruction": 0.2, "faithfulness": 0.6, "task": 1.0}, EQUAL) == pytest.approx(0.6)
    # a zero (or missing) weight leaves the axis out
    assert combine({"instruction": 0.2, "task": 1.0}, {"instruction": 0.0, "task": 1.0}) == 1.0
    assert combine({"instruction": 0.2, "task": 1.0}, {"task": 2.0}) == 1.0
    # nothing applies
    assert combine({"instruction": None, "faithfulness": None, "task": None}, EQUAL) == 0.0
    assert combine({"instruction": 0.9}, {"task": 1.0}) == 0.0


# ------------------------------------------------------------------------------------------ judge
def test_instruction_example_has_no_faithfulness(demo) -> None:
    ifs, _ = demo
    ex = next(e for e in ifs if e.constraints)
    j = _judge1(ex, ex.response)
    assert j.scores == {"instruction": 1.0, "faithfulness": None, "task": 1.0}
    assert j.combined == 1.0
    assert (j.candidate_id, j.example_id) == (f"{ex.id}-c", ex.id)
    assert "k-precision: no context" in j.rationale


def test_instruction_score_counts_violated_constraints(demo) -> None:
    ifs, _ = demo
    picked = [e for e in ifs if len(e.constraints) == 2 and e.constraints[0]["id"] == "change_case:english_capital"
              and e.constraints[1]["id"] in CASE_BLIND]
    assert picked, "the demo set should hold an all-capitals example with a second, case-blind constraint"
    for ex in picked:
        j = _judge1(ex, ex.response.lower())  # breaks the all-capitals rule only
        assert j.scores["instruction"] == 0.5
        assert j.scores["faithfulness"] is None
        assert j.scores["task"] == 1.0  # ROUGE-L is computed on lowercased tokens
        assert j.combined == pytest.approx(0.75)
        assert j.combined == pytest.approx(combine(j.scores, EQUAL))
        assert "1/2 instructions followed (failed: change_case:english_capital)" in j.rationale
        # instruction weight 3: (3 * 0.5 + 1 * 1.0) / 4; the faithfulness weight does not matter
        heavy = _judge1(ex, ex.response.lower(), {"instruction": 3.0, "faithfulness": 7.0, "task": 1.0})
        assert heavy.combined == pytest.approx(2.5 / 4)


def test_example_without_constraints_has_no_instruction_axis() -> None:
    ex = Example("e1", "unit", "instruction", "Name a colour.", "Blue is a colour.")
    j = _judge1(ex, "Red is a colour.")
    assert j.scores["instruction"] is None and j.scores["faithfulness"] is None
    # ROUGE-L over [red|blue, is, colour]: LCS 2 of 3 -> F1 2/3; the only applicable axis
    assert j.scores["task"] == pytest.approx(2 / 3)
    assert j.combined == pytest.approx(2 / 3)


MILL = Example(
    id="mill",
    source="unit",
    kind="grounded",
    instruction="Where does the mill stand?",
    response="The mill stands in Halstead.",
    context="The old mill stands in Halstead next to the river. It was built in 1820 by a miller named "
            "Tom Ash. Today it is a museum that opens every weekend.",
    task="extractive",
    meta={"answer": "Halstead"},
)


def test_copying_the_passage_is_faithful_but_scores_lower() -> None:
    ref = _judge1(MILL, MILL.response)
    copy = _judge1(MILL, MILL.context or "")
    assert ref.scores == {"instruction": None, "faithfulness": 1.0, "task": 1.0} and ref.combined == 1.0
    assert copy.scores["faithfulness"] == 1.0
    # 26 passage tokens, 4 shared with the 4-token reference: F1 = 2 * 4/26 * 1 / (4/26 + 1) = 8/30;
    # the answer is in the copy (recall 1): task = 8/30 * 1
    assert copy.scores["task"] == pytest.approx(8 / 30)
    assert copy.combined == pytest.approx((1 + 8 / 30) / 2)
    assert copy.combined < ref.combined


def test_copying_the_passage_lowers_task_on_demo_examples(demo) -> None:
    _, cds = demo
    for ex in cds:
        ref, copy = _judge1(ex, ex.response), _judge1(ex, ex.context or "")
        assert copy.scores["faithfulness"] == 1.0
        assert copy.scores["task"] < ref.scores["task"] == 1.0, ex.id


def test_copying_the_passage_never_beats_the_reference(demo) -> None:
    _, cds = demo
    worse = [ex.id for ex in cds if _judge1(ex, ex.context or "").combined >= _judge1(ex, ex.response).combined]
    assert worse == []


def test_counterfactual_memory_answer_scores_lower(demo) -> None:
    _, cds = demo
    cf = [e for e in cds if e.meta.get("counterfactual")]
    assert cf
    for ex in cf:
        answer, memory = ex.meta["answer"], ex.meta["memory_answer"]
        text = ex.response.replace(answer, memory) if answer in ex.response else memory
        ref, mem = _judge1(ex, ex.response), _judge1(ex, text)
        assert mem.combined < ref.combined, ex.id
        # the answer from memory misses the gold span of the (counterfactual) passage
        assert mem.scores["task"] < ref.scores["task"] == 1.0, ex.id
        assert "answer recall" in mem.rationale and "answer recall 1.00" not in mem.rationale


def test_judge_refuses_unknown_examples() -> None:
    with pytest.raises(ValueError, match="unknown examples"):
        judge([MILL], [Candidate("c1", "mill", "x"), Candidate("c2", "ghost", "y")], EQUAL, default_judges())


def test_judge_keeps_decoding_in_details() -> None:
    (j,) = judge([MILL], [Candidate("c1", "mill", "In Halstead.", {"temperature": 0.7})], EQUAL, default_judges())
    assert j.details["decoding"] == {"temperature": 0.7}
    assert set(j.details["by_judge"]) == {"rules", "k-precision", "reference"}


# ------------------------------------------------------------------------------------- selection
def _examples() -> list[Example]:
    return [
        Example("e1", "src-a", "instruction", "Prompt one.", "ref one"),
        Example("e2", "src-a", "instruction", "Prompt two.", "ref two"),
        Example("e3", "src-b", "grounded", "Prompt three?", "ref three", context="A passage.", task="abstractive"),
        Example("e4", "src-b", "grounded", "Prompt four?", "ref four", context="Another passage.", task="abstractive"),
        Example("e5", "src-b", "grounded", "Prompt five?", "ref five", context="Third passage.", task="abstractive"),
    ]


def _pool(scores: dict[str, dict[str, float]]) -> tuple[list[Candidate], list[Judgment]]:
    """scores: example id -> {candidate id: combined score}."""
    cands, judgments = [], []
    for ex_id, by_cand in scores.items():
        for cid, score in by_cand.items():
            cands.append(Candidate(cid, ex_id, f"text of {cid}", {"strategy": cid.split("-")[-1]}))
            judgments.append(Judgment(cid, ex_id, {"task": score}, score, details={"decoding": {"strategy": cid[-1]}}))
    return cands, judgments


SCORES = {
    "e1": {"e1-a": 0.6, "e1-b": 0.9},
    "e2": {"e2-a": 0.3, "e2-b": 0.4},  # never reaches 0.5
    "e3": {"e3-b": 0.8, "e3-a": 0.8},  # a tie, listed larger id first
    "e4": {"e4-a": 0.5},  # exactly on the threshold
    "e5": {"e5-a": 0.1, "e5-b": 0.2, "e5-c": 0.75},
}


def test_reset_keeps_best_per_prompt_above_threshold() -> None:
    cands, judgments = _pool(SCORES)
    sel = select(_examples(), cands, judgments, SelectConfig(mode="reset", threshold=0.5, min_selected=1))
    got = {e.id: e.meta["candidate_id"] for e in sel.examples}
    assert got == {"e1@reset": "e1-b", "e3@reset": "e3-a", "e4@reset": "e4-a", "e5@reset": "e5-c"}
    e1 = sel.examples[0]
    assert e1.id == "e1@reset" and e1.response == "text of e1-b" and e1.instruction == "Prompt one."
    assert e1.meta["combined"] == 0.9 and e1.meta["origin"] == "reset"
    e3 = next(e for e in sel.examples if e.id == "e3@reset")
    assert e3.context == "A passage." and e3.kind == "grounded" and e3.task == "abstractive"
    assert [e.id for e in sel.examples] == sorted(got)


def test_tie_breaks_to_the_smaller_candidate_id_whatever_the_order() -> None:
    cands, judgments = _pool({"e1": {"e1-z": 0.7, "e1-m": 0.7, "e1-q": 0.7}})
    cfg = SelectConfig(threshold=0.5)
    for order in (judgments, judgments[::-1], [judgments[2], judgments[0], judgments[1]]):
        (ex,) = select(_examples(), cands, order, cfg).examples
        assert ex.meta["candidate_id"] == "e1-m"


def test_reset_report() -> None:
    cands, judgments = _pool(SCORES)
    rep = select(_examples(), cands, judgments, SelectConfig(threshold=0.5)).report
    assert rep["prompts"] == 5 and rep["candidates"] == 10 and rep["selected"] == 4
    assert rep["keep_rate"] == pytest.approx(4 / 5)
    assert rep["threshold"] == 0.5 and rep["mode"] == "reset"
    assert rep["per_group"] == {
        "src-a/instruction": {"prompts": 2, "kept": 1, "keep_rate": 0.5},
        "src-b/grounded": {"prompts": 3, "kept": 3, "keep_rate": 1.0},
    }
    assert rep["per_task"] == {
        "abstractive": {"prompts": 3, "kept": 3, "keep_rate": 1.0},
        "open": {"prompts": 2, "kept": 1, "keep_rate": 0.5},
    }
    assert rep["mean_selected_score"] == pytest.approx((0.9 + 0.8 + 0.5 + 0.75) / 4)
    assert rep["best_score"] == 0.9
    assert rep["selected_by_strategy"] == {"b": 1, "a": 2, "c": 1}  # e1-b, e3-a, e4-a, e5-c


def test_reset_s_uses_strict_threshold_then_top_fraction() -> None:
    cands, judgments = _pool(SCORES)
    # bests: e1 0.9, e3 0.8, e5 0.75 pass 0.7; e4 (0.5) and e2 (0.4) do not.
    # top_fraction 0.34 of 3 -> ceil(1.02) = 2: e1 and e3
    sel = select(_examples(), cands, judgments,
                 SelectConfig(mode="reset-s", threshold=0.0, strict_threshold=0.7, top_fraction=0.34))
    assert [e.id for e in sel.examples] == ["e1@reset", "e3@reset"]
    assert sel.report["threshold"] == 0.7 and sel.report["selected"] == 2
    assert sel.report["per_group"]["src-b/grounded"] == {"prompts": 3, "kept": 1, "keep_rate": pytest.approx(1 / 3)}
    # top_fraction 1.0: all that pass the strict threshold
    sel = select(_examples(), cands, judgments, SelectConfig(mode="reset-s", strict_threshold=0.7, top_fraction=1.0))
    assert [e.id for e in sel.examples] == ["e1@reset", "e3@reset", "e5@reset"]
    # a tiny fraction still keeps one per kind (the best of each)
    sel = select(_examples(), cands, judgments, SelectConfig(mode="reset-s", strict_threshold=0.7, top_fraction=0.01))
    assert [e.id for e in sel.examples] == ["e1@reset", "e3@reset"]


def test_reset_s_ranks_within_each_kind() -> None:
    """IF answers score lower than grounded ones on the combined scale (no faithfulness axis, a low
    task score against a free-form reference): one ranking over both kinds would keep none of them."""
    examples = ([Example(f"i{k}", "s", "instruction", f"P{k}", "r") for k in range(6)]
                + [Example(f"g{k}", "s", "grounded", f"Q{k}?", "r", context="C.", task="extractive") for k in range(6)])
    scores = {f"i{k}": {f"i{k}-a": 0.55 + 0.01 * k} for k in range(6)}
    scores |= {f"g{k}": {f"g{k}-a": 0.8 + 0.01 * k} for k in range(6)}
    cands, judgments = _pool(scores)
    sel = select(examples, cands, judgments, SelectConfig(mode="reset-s", strict_threshold=0.5, top_fraction=0.34))
    # ceil(0.34 * 6) = 3 of each kind
    assert [e.id for e in sel.examples] == ["g3@reset", "g4@reset", "g5@reset", "i3@reset", "i4@reset", "i5@reset"]


@pytest.mark.parametrize("n", [1, 3, 7, 10])
def test_reset_s_keeps_ceil_of_top_fraction(n: int) -> None:
    examples = [Example(f"x{i:02d}", "s", "instruction", f"P{i}", "r") for i in range(n)]
    scores = {f"x{i:02d}": {f"x{i:02d}-a": 0.7 + 0.02 * i} for i in range(n)}
    cands, judgments = _pool(scores)
    sel = select(examples, cands, judgments, SelectConfig(mode="reset-s", strict_threshold=0.7, top_fraction=0.34))
    k = math.ceil(0.34 * n)
    assert len(sel.examples) == k
    # the k highest scores are the last k ids
    assert [e.id for e in sel.examples] == [f"x{i:02d}@reset" for i in range(n - k, n)]


def test_min_selected_violation() -> None:
    cands, judgments = _pool(SCORES)
    with pytest.raises(SelectionError) as err:
        select(_examples(), cands, judgments, SelectConfig(threshold=0.95, min_selected=1))
    msg = str(err.value)
    assert "0 examples selected" in msg and "select.min_selected is 1" in msg
    assert "threshold 0.95" in msg and "best combined score was 0.900" in msg
    assert "Lower the threshold" in msg
    with pytest.raises(SelectionError, match="4 examples selected"):
        select(_examples(), cands, judgments, SelectConfig(threshold=0.5, min_selected=5))


def test_judgments_for_unknown_candidates() -> None:
    cands, judgments = _pool(SCORES)
    with pytest.raises(ValueError, match="1 judgments refer to unknown candidates.*e5-c"):
        select(_examples(), [c for c in cands if c.id != "e5-c"], judgments, SelectConfig())


def test_judgments_for_unknown_examples() -> None:
    cands, judgments = _pool(SCORES)
    with pytest.raises(ValueError, match="e1"):
        select([e for e in _examples() if e.id != "e1"], cands, judgments, SelectConfig())


def test_judgment_example_mismatch_is_refused() -> None:
    cands, judgments = _pool({"e1": {"e1-a": 0.9}})
    wrong = [Judgment("e1-a", "e2", {"task": 0.9}, 0.9)]  # the candidate answers e1, not e2
    with pytest.raises(ValueError):
        select(_examples(), cands, wrong, SelectConfig())


def _judged(examples, cands):
    """Judge as the judge step does: the default judges, then the gate facts on each judgment."""
    from reset.judging.gates import gate_flags

    by_ex = {e.id: e for e in examples}
    js = judge(examples, cands, EQUAL, default_judges())
    for j, c in zip(js, cands, strict=True):
        j.details["gates"] = gate_flags(by_ex[j.example_id], c.text)
    return js


def test_gates_keep_copies_and_memory_answers_out_of_the_selection() -> None:
    from reset.data.demo import build_demo

    _, cds = build_demo(seed=0, n_instruction=0, n_grounded=60)
    ex = next(e for e in cds if e.task == "extractive" and e.meta.get("counterfactual"))
    answer, memory = ex.meta["answer"], ex.meta["memory_answer"]
    cands = [Candidate(f"{ex.id}/copy", ex.id, ex.context),                      # the whole passage
             Candidate(f"{ex.id}/memory", ex.id, f"{memory}."),                    # the model's memory
             Candidate(f"{ex.id}/right", ex.id, f"It is {answer}.")]               # the passage's answer
    js = _judged([ex], cands)
    gates = {j.candidate_id.split("/")[1]: j.details["gates"] for j in js}
    assert gates["copy"]["no_copy"] is False and gates["memory"]["answer_correct"] is False
    assert gates["right"] == {"if_pass": None, "answer_correct": True, "no_copy": True}
    sel = select([ex], cands, js, SelectConfig(threshold=0.0))
    assert [s.response for s in sel.examples] == [f"It is {answer}."]
    assert sel.report["gated_out"]["answer_correct"] >= 1 and sel.report["gated_out"]["no_copy"] == 1
    assert sel.report["ranks"][f"{ex.id}/right"]["selected"] is True
    # the copy is perfectly "faithful" by K-Precision: faithfulness alone would have picked it
    faith = {j.candidate_id.split("/")[1]: j.scores["faithfulness"] for j in js}
    assert faith["copy"] == 1.0 and faith["copy"] >= faith["right"]


def test_an_if_candidate_that_breaks_an_instruction_is_never_kept() -> None:
    ex = Example(id="q", source="s", kind="instruction", instruction="Describe tea. Do not use any commas.",
                 response="Tea is calm.", constraints=[{"id": "punctuation:no_comma", "kwargs": {}}])
    cands = [Candidate("q/bad", "q", "Tea is calm, warm, and kind."), Candidate("q/ok", "q", "Tea is a warm drink.")]
    sel = select([ex], cands, _judged([ex], cands), SelectConfig(threshold=0.0))
    assert [s.response for s in sel.examples] == ["Tea is a warm drink."]
    assert sel.report["per_family"]["punctuation"] == {"prompts": 1, "kept": 1, "keep_rate": 1.0}
    assert sel.report["gated_out"]["if_pass"] == 1


def test_reset_s_by_family_keeps_the_hard_families() -> None:
    """A hard family (startend: its best answers score lower) loses every prompt to a top share per
    kind; ranked within each family, the same share keeps the top of each."""
    def ifx(i: int, fam: str) -> Example:
        return Example(f"{fam[:2]}{i}", "s", "instruction", f"P{i}", "r",
                       constraints=[{"id": f"{fam}:x", "kwargs": {}}])

    examples = [ifx(i, "punctuation") for i in range(6)] + [ifx(i, "startend") for i in range(6)]
    scores = {e.id: {f"{e.id}-a": (0.9 if e.id.startswith("pu") else 0.6) + 0.01 * int(e.id[2:])} for e in examples}
    cands, judgments = _pool(scores)
    by_kind = select(examples, cands, judgments, SelectConfig(mode="reset-s", strict_threshold=0.5, top_fraction=0.34))
    assert [e.id for e in by_kind.examples] == [f"pu{i}@reset" for i in range(1, 6)]  # ceil(0.34 * 12) = 5
    by_family = select(examples, cands, judgments,
                       SelectConfig(mode="reset-s", strict_threshold=0.5, top_fraction=0.34, stratify="family"))
    assert [e.id for e in by_family.examples] == ["pu3@reset", "pu4@reset", "pu5@reset",
                                                  "st3@reset", "st4@reset", "st5@reset"]
    assert by_family.report["per_family"]["startend"]["kept"] == 3
