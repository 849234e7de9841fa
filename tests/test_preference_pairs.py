"""The judged candidates as preference pairs (reset.selection.preference_pairs, the select step's
`preference_pairs` output): chosen = the selected answer, rejected = the lowest-scoring answer to
the same prompt that failed a gate or the threshold; the file loads with TRL's own dataset helpers
as a conversational preference data set. And the rising threshold of later ReSet rounds."""

from __future__ import annotations

import pytest

from reset import steps
from reset.config import SelectConfig
from reset.data.demo import build_demo
from reset.data.records import Candidate, write_jsonl
from reset.judging.run import judge_all
from reset.models.chat import messages
from reset.selection import preference_pairs, round_threshold, select


@pytest.fixture(scope="module")
def judged():
    """Demo prompts, each with its reference answer (the best), an empty answer (below any
    threshold), for IF prompts the reference lower-cased, and for grounded ones the passage copied
    (a failed gate whose score is well above the empty answer's)."""
    from reset.config import JudgeConfig

    ifs, cds = build_demo(seed=5, n_instruction=8, n_grounded=8)
    examples = ifs + cds
    cands = []
    for e in examples:
        cands.append(Candidate(f"{e.id}/g0s0", e.id, e.response, {"strategy": "greedy", "temperature": 0.0}))
        cands.append(Candidate(f"{e.id}/g1s0", e.id, "", {"strategy": "sample", "temperature": 1.0}))
        if e.constraints and e.response.lower() != e.response:
            cands.append(Candidate(f"{e.id}/g1s1", e.id, e.response.lower(), {"strategy": "sample"}))
        if e.context:  # the passage copied: fails the no-copy gate with a score well above the empty answer's
            cands.append(Candidate(f"{e.id}/g1s2", e.id, e.context, {"strategy": "sample"}))
    result = judge_all(examples, cands, JudgeConfig(judges=["rules", "k-precision", "reference"]))
    return examples, cands, result.judgments


def test_pairs_pair_the_selected_answer_with_a_rejected_one(judged):
    examples, cands, judgments = judged
    cfg = SelectConfig(threshold=0.3)
    sel = select(examples, cands, judgments, cfg)
    rows, counts = preference_pairs(examples, cands, judgments, cfg, sel, messages)
    assert rows and counts["pairs"] == len(rows) and counts["selected_prompts"] == len(sel.examples)
    by_c = {c.id: c for c in cands}
    by_j = {j.candidate_id: j for j in judgments}
    selected = {e.meta["candidate_id"] for e in sel.examples}
    by_ex = {e.id: e for e in examples}
    for r in rows:
        assert r["chosen_id"] in selected
        assert r["chosen"] == [{"role": "assistant", "content": by_c[r["chosen_id"]].text}]
        assert r["rejected"] == [{"role": "assistant", "content": by_c[r["rejected_id"]].text}]
        assert r["prompt"] == messages(by_ex[r["example_id"]])
        lost = by_j[r["rejected_id"]]
        failed = [g for g, ok in lost.details["gates"].items() if ok is False]
        assert lost.combined < 0.3 or failed  # the rejected answer failed the threshold or a gate
        assert (r["chosen_score"], r["rejected_score"]) == (by_j[r["chosen_id"]].combined, lost.combined)
        assert r["margin"] == pytest.approx(r["chosen_score"] - r["rejected_score"])
        # the lowest-scoring of the other answers to the prompt that failed the threshold or a gate
        failing = [j.combined for j in judgments if j.example_id == r["example_id"] and j.candidate_id != r["chosen_id"]
                   and (j.combined < 0.3 or any(ok is False for ok in j.details["gates"].values()))]
        assert by_c[r["rejected_id"]].example_id == r["example_id"] and lost.combined == min(failing)
    assert any("gate if_pass" in r["rejected_because"] for r in rows)
    assert any("below the threshold" in r["rejected_because"] for r in rows)
    assert counts["rejected_because"]


def test_the_select_step_writes_pairs_trl_loads_as_a_preference_dataset(judged, tmp_path, tiny_model_dir):
    from datasets import load_dataset
    from trl.data_utils import is_conversational, maybe_apply_chat_template, unpair_preference_dataset

    from reset.models.loading import load_tokenizer

    examples, cands, judgments = judged
    for name, rows in (("seen", examples), ("cands", cands), ("judgments", judgments)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    cfg = steps.config(select={"threshold": 0.3}, model={"system_prompt": "Be brief."},
                       tracking={"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "pairs"})
    out = tmp_path / "pairs.jsonl"
    rep = steps.select(str(tmp_path / "seen.jsonl"), str(tmp_path / "cands.jsonl"),
                       str(tmp_path / "judgments.jsonl"), cfg, out_selected=str(tmp_path / "sel.jsonl"),
                       out_pairs=str(out))
    assert rep["preference_pairs"]["pairs"] == len(out.read_text().splitlines()) > 0

    ds = load_dataset("json", data_files=str(out), split="train")
    assert {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin"} <= set(ds.column_names)
    assert is_conversational(ds[0])
    tok = load_tokenizer(tiny_model_dir)
    text = maybe_apply_chat_template(ds[0], tok)  # what DPOTrainer does to each row
    assert text["prompt"].startswith("<|im_start|>system\nBe brief.") and text["prompt"].endswith("assistant\n")
    assert ds[0]["chosen"][0]["content"] in text["chosen"] and ds[0]["rejected"][0]["content"] in text["rejected"]
    unpaired = unpair_preference_dataset(ds.select_columns(["prompt", "chosen", "rejected"]))
    assert len(unpaired) == 2 * len(ds) and sorted(set(unpaired["label"])) == [False, True]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pairs").experiment_id])
    assert run.data.metrics["pairs.pairs"] == len(ds)
    assert any(d.dataset.name == "preference_pairs" for d in run.inputs.dataset_inputs)
    assert "preference_pairs/pairs.jsonl" in [f.path for f in client.list_artifacts(run.info.run_id,
                                                                                    "preference_pairs")]


def test_later_rounds_raise_the_threshold(judged):
    examples, cands, judgments = judged
    cfg = SelectConfig(threshold=0.3, threshold_step=0.6)
    assert [round_threshold(cfg, k) for k in (1, 2, 3)] == pytest.approx([0.3, 0.9, 1.0])
    first, second = (select(examples, cands, judgments, cfg, k) for k in (1, 2))
    assert second.report["threshold"] == pytest.approx(0.9) and second.report["round"] == 2
    assert 0 < len(second.examples) < len(first.examples)  # the grounded references (0.875) fall below 0.9
    assert all(e.meta["combined"] >= 0.9 - 1e-12 for e in second.examples)
