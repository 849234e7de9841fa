"""The built-in demo data set."""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from reset.data.demo import SOURCE_CD, SOURCE_IF, build_demo
from reset.data.records import Example
from reset.ifeval import check, count_words, describe, ifeval_accuracy, validate_constraints
from reset.judging.lexical import k_precision, normalize_tokens, task_score


@pytest.fixture(scope="module")
def demo() -> tuple[list[Example], list[Example]]:
    return build_demo(seed=0)


def _norm(text: str) -> str:
    """Normalised tokens joined with spaces, padded so that `in` matches whole tokens."""
    return f" {' '.join(normalize_tokens(text))} "


def _rows(examples: list[Example]) -> list[dict]:
    return [dataclasses.asdict(e) for e in examples]


def test_sizes_and_kinds(demo: tuple[list[Example], list[Example]]) -> None:
    inst, grounded = demo
    assert len(inst) == 300 and len(grounded) == 300
    assert all(e.kind == "instruction" and e.task == "open" and e.context is None for e in inst)
    assert all(e.source == SOURCE_IF for e in inst)
    assert all(e.kind == "grounded" and e.has_context for e in grounded)
    assert all(e.source == SOURCE_CD for e in grounded)
    tasks = [e.task for e in grounded]
    assert {"extractive", "abstractive"} == set(tasks)
    assert 0.3 < tasks.count("extractive") / len(tasks) < 0.7
    small_if, small_cd = build_demo(seed=3, n_instruction=7, n_grounded=5)
    assert len(small_if) == 7 and len(small_cd) == 5


def test_deterministic_per_seed() -> None:
    a = build_demo(seed=5, n_instruction=40, n_grounded=40)
    b = build_demo(seed=5, n_instruction=40, n_grounded=40)
    c = build_demo(seed=6, n_instruction=40, n_grounded=40)
    assert _rows(a[0]) == _rows(b[0]) and _rows(a[1]) == _rows(b[1])
    assert _rows(a[0]) != _rows(c[0]) and _rows(a[1]) != _rows(c[1])


def test_ids_unique_and_stable(demo: tuple[list[Example], list[Example]]) -> None:
    inst, grounded = demo
    ids = [e.id for e in inst + grounded]
    assert len(set(ids)) == len(ids)
    assert inst[42].id == "demo-if-00042"
    assert grounded[17].id == "demo-cd-00017"


def test_records_validate_and_references_follow_constraints(demo: tuple[list[Example], list[Example]]) -> None:
    inst, grounded = demo
    for e in inst + grounded:
        e.validate()
        validate_constraints(e.constraints)
        for c in e.constraints:
            assert check(c, e.response), (e.id, c, e.response)
            assert describe(c) in e.instruction, (e.id, c)


def test_references_score_full_marks_under_ifeval_strict_and_loose(demo: tuple[list[Example], list[Example]]) -> None:
    inst, grounded = demo
    acc = ifeval_accuracy([(e.constraints, e.response, e.instruction) for e in inst + grounded])
    assert acc == {"prompt_strict": 1.0, "instruction_strict": 1.0, "prompt_loose": 1.0, "instruction_loose": 1.0}
    # the change_case constraints (IFEval also asks langdetect for English) are well represented
    ids = [c["id"] for e in inst for c in e.constraints]
    assert ids.count("change_case:english_capital") >= 20 and ids.count("change_case:english_lowercase") >= 20


def test_instruction_examples(demo: tuple[list[Example], list[Example]]) -> None:
    inst, _ = demo
    assert all(1 <= len(e.constraints) <= 2 for e in inst)
    assert len({c["id"] for e in inst for c in e.constraints}) >= 10
    words = [count_words(e.response) for e in inst]
    assert min(words) >= 10 and max(words) <= 70
    assert 15 <= statistics.mean(words) <= 60
    # varied prompts: many distinct opening requests
    assert len({e.instruction.split(".")[0].split("?")[0] for e in inst}) > 100


def test_grounded_examples(demo: tuple[list[Example], list[Example]]) -> None:
    _, grounded = demo
    for e in grounded:
        n = count_words(e.context)
        assert 50 <= n <= 110, (e.id, n)
    constrained = sum(bool(e.constraints) for e in grounded)
    assert 0.2 <= constrained / len(grounded) <= 0.3
    assert all(len(e.constraints) <= 1 for e in grounded)
    for e in grounded:
        if e.task == "extractive":
            assert _norm(e.meta["answer"]) in _norm(e.context)
            assert _norm(e.meta["answer"]) in _norm(e.response)
        else:
            key = e.meta["key_facts"]
            assert key["entity"] in e.context and key["when"] in e.context


def test_counterfactual_share(demo: tuple[list[Example], list[Example]]) -> None:
    _, grounded = demo
    extractive = [e for e in grounded if e.task == "extractive"]
    cf = [e for e in extractive if e.meta.get("counterfactual")]
    assert 0.35 <= len(cf) / len(extractive) <= 0.45
    for e in cf:
        assert _norm(e.meta["memory_answer"]) != _norm(e.meta["answer"])
        # the passage never states the true fact
        assert _norm(e.meta["memory_answer"]) not in _norm(e.context), e.id


def test_references_reword_rather_than_copy(demo: tuple[list[Example], list[Example]]) -> None:
    _, grounded = demo
    for e in grounded:
        sentences = [s.strip() for s in e.context.split(". ")]
        assert e.response.rstrip(".") not in sentences
    kp = [k_precision(e.response, e.context) for e in grounded]
    assert 0.6 <= statistics.mean(kp) < 0.95
    assert sum(k < 1.0 for k in kp) / len(kp) >= 0.8


def test_copying_the_passage_is_faithful_but_scores_low(demo: tuple[list[Example], list[Example]]) -> None:
    _, grounded = demo
    copies = []
    for e in grounded:
        assert k_precision(e.context, e.context) >= 0.95
        copy = task_score(e.context, e.response, e.task)
        assert copy < task_score(e.response, e.response, e.task) == 1.0
        copies.append(copy)
    assert max(copies) < 0.5
    assert statistics.mean(copies) < 0.3


def test_memory_answer_scores_low(demo: tuple[list[Example], list[Example]]) -> None:
    _, grounded = demo
    cf = [e for e in grounded if e.meta.get("counterfactual")]
    memory = [task_score(e.meta["memory_answer"], e.response, e.task) for e in cf]
    passage = [task_score(e.meta["answer"], e.response, e.task) for e in cf]
    assert all(m < p for m, p in zip(memory, passage, strict=True))
    assert statistics.mean(memory) < 0.15
    # answering from memory inside the reference's own wording still loses to the passage's answer
    for e in cf:
        swapped = e.response.replace(e.meta["answer"], e.meta["memory_answer"])
        if swapped != e.response:
            assert task_score(swapped, e.response, e.task) < 1.0


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        build_demo(n_instruction=-1)
    assert build_demo(n_instruction=0, n_grounded=0) == ([], [])


def test_demo_prompts_are_unique_so_the_mixer_drops_none() -> None:
    from reset.data.mix import dedupe

    for seed in (0, 1):
        ifs, cds = build_demo(seed=seed, n_instruction=300, n_grounded=300)
        kept, dropped = dedupe(ifs + cds)
        assert dropped == [] and len(kept) == 600
