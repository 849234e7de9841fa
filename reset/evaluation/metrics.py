"""Held-out evaluation: one row of scores per (model, example), and the metrics built from rows.

    evaluate(model_dir, examples, cfg, model_cfg, judge_cfg, model_name=...) -> (metrics, rows)

Each model answers every held-out prompt greedily (through reset.models.generation.generate,
the one call that picks the backend); the configured judges still score every answer (their
scores are in the rows and in `combined`), and `score_example` adds the measures that copying
cannot game. A row is a flat JSON-able dict; every figure of the report is recomputed from rows,
and rows pair across models by `example_id`.

Row fields (None where a field does not apply to the example):
  model, example_id, source, kind, task, response, n_words
  if_ids              the example's IFEval instruction ids
  if_followed         strict verdict per instruction (IFEval's checkers; loose: if_followed_loose)
  if_pass             every instruction followed, strict (IFEval's prompt-level; loose: if_pass_loose)
  answer_in_response  extractive with a gold answer: the answer's normalised tokens occur as a
                      contiguous span of the response's (meta["answer"]: a string or a list of
                      accepted strings)
  passage_copy        grounded: share of the passage's tokens the response reproduces in order
                      (longest common subsequence / passage length)
  answer_correct      extractive with a gold answer: answer in the response, the response is not a
                      copy of the passage (passage_copy < COPY_LIMIT) and, on a counterfactual
                      passage, the memory answer is not in it either
  counterfactual      extractive: meta["counterfactual"] (the passage contradicts common knowledge)
  cf_outcome          counterfactual passages: "passage" (the passage's answer only), "memory" (the
                      model's memory answer only, meta["memory_answer"]), "both", "neither", or
                      "copy" (the passage copied, so the answer says nothing)
  k_precision         grounded: K-Precision over content words (always computed, judge or not)
  answer_f1           extractive: SQuAD token F1 against the reference response
  rouge_l             abstractive and open: ROUGE-L F1 against the reference response
  key_facts           abstractive with meta["key_facts"] (a dict or list of strings): share of the
                      key facts (names, numbers, dates) the summary states
  faith_judges        grounded: the configured faithfulness judges' score (their weighted mean; the
                      K-Precision above when no faithfulness judge is configured)
  faithfulness        grounded: faith_judges, but 0 for an extractive answer that is not correct
                      against the passage (answer_correct False): faithfulness counts only for a
                      right answer, so a copied wrong sentence or a memory answer scores 0
  score_instruction, score_faithfulness, score_task, combined   the judges' axes and weighted mean
  judge.<name>        each configured judge's own score
  why.<name>          that judge's rationale (MLflow's assessments carry it: reset.genai)

Metrics (`METRICS`, plus per constraint family and per judge from `metrics_for`): each is a rate
(pass / fail per unit: Wilson interval, exact McNemar) or a mean (bootstrap interval, paired
bootstrap) over units that pair across models by id: the example, or "<example>#<i>" for the i-th
instruction of an example. IF metrics count every prompt with constraints (IF prompts of both
kinds; `if_prompt_acc.instruction` / `.grounded` split them). Constraint families are the part of
the IFEval id before ":" (change_case, length_constraints, ...), scored per instruction
(`if_family.<family>`); the per-id figure is `if_id.<id>`, given by `family_metrics(level="id")`.

What copying can game (see docs/design.md): K-Precision and the faithfulness judges (a copied
sentence, right or wrong, scores 1.0; so does a copied passage), answer_in_response and key_facts
(a copied passage contains them). Not gameable by copying: answer_correct, the counterfactual rate,
faithfulness (gated), answer_f1 and rouge_l (a passage copy scores about 0.3 against a one-sentence
reference), and the IF metrics.

`PRIMARY` names the two axes of the paper as metric keys (instruction following, faithfulness).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from reset import ifeval
from reset.config import JUDGE_AXES, DecodingSetting, EvaluateConfig, GenerateConfig, JudgeConfig, ModelConfig
from reset.data.records import Example, Judgment
from reset.judging import build_judges, close_judges, judge
from reset.judging.lexical import (
    check_answer,
    contains_span,
    k_precision,
    normalize_tokens,
    rouge_l_f1,
    token_f1,
)
from reset.models.generation import generate

# The two axes of the paper (instruction following, faithfulness), as metric keys: the trade-off
# plot's axes, the verdict's, and the registry's promotion gate.
PRIMARY = ("if_prompt_acc", "faithfulness")

Row = dict[str, Any]
Value = bool | float


# ------------------------------------------------------------------------------------- evaluate
def evaluate(
    model_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    cfg: EvaluateConfig,
    model_cfg: ModelConfig,
    judge_cfg: JudgeConfig,
    *,
    model_name: str = "",
    log: Callable[[str], None] = print,
) -> tuple[dict[str, float], list[Row]]:
    """Greedy answers of one model to the held-out examples, judged and scored.
    Returns (point metrics, one row per example)."""
    gen_cfg = GenerateConfig(
        grid=[DecodingSetting(temperature=0.0, top_p=1.0)],
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        backend=cfg.backend,
    )
    # The one generation call (the backend seam); the rows only need the texts in example order.
    cands = generate(model_dir, examples, gen_cfg, model_cfg, model_name=model_name, log=log)
    rows = score_candidates(examples, cands, judge_cfg, model_name=model_name)
    return point_metrics(rows), rows


def score_candidates(
    examples: Sequence[Example], candidates: Sequence[Any], judge_cfg: JudgeConfig, *, model_name: str = ""
) -> list[Row]:
    """Judge one candidate per example with the configured judges and score it: one row each."""
    judges = build_judges(judge_cfg)
    try:
        judgments = judge(examples, candidates, judge_cfg.weights, judges, judge_cfg.judge_weights)
    finally:
        close_judges(judges)
    by_id = {e.id: e for e in examples}
    texts = {c.id: c.text for c in candidates}
    return [score_example(by_id[j.example_id], texts[j.candidate_id], j, model_name=model_name) for j in judgments]


# ------------------------------------------------------------------------------- one example
def _key_facts(value: Any) -> list[list[str]]:
    facts = value.values() if isinstance(value, Mapping) else value if isinstance(value, list | tuple) else []
    return [toks for f in facts if isinstance(f, str | int | float) and (toks := normalize_tokens(str(f)))]


def score_example(ex: Example, response: str, judgment: Judgment | None = None, *, model_name: str = "") -> Row:
    """Every per-example measure of one response (see the module docstring for the fields)."""
    row: Row = {
        "model": model_name,
        "example_id": ex.id,
        "source": ex.source,
        "kind": ex.kind,
        "task": ex.task,
        "response": response,
        "n_words": len(response.split()),
    }
    # instruction following: IFEval's checkers, strict and loose
    ids = [c["id"] for c in ex.constraints]
    strict = [ifeval.check(c, response, prompt=ex.instruction) for c in ex.constraints]
    loose = [
        s or ifeval.check(c, response, loose=True, prompt=ex.instruction)
        for c, s in zip(ex.constraints, strict, strict=True)
    ]
    row.update(
        if_ids=ids,
        if_followed=strict,
        if_followed_loose=loose,
        if_pass=all(strict) if ids else None,
        if_pass_loose=all(loose) if ids else None,
    )
    # grounded: correctness against the passage, copying, overlap with the reference
    grounded = ex.has_context
    tokens = normalize_tokens(response)
    check = check_answer(ex, response)
    copy, in_resp, correct, outcome = check.copy, check.in_response, check.correct, check.outcome
    cf = bool(ex.meta.get("counterfactual", False)) if grounded and ex.task == "extractive" else None
    key = None
    if grounded and ex.task == "abstractive" and (facts := _key_facts(ex.meta.get("key_facts"))):
        key = sum(contains_span(tokens, f) for f in facts) / len(facts)
    kp = k_precision(response, ex.context or "") if grounded else None
    row.update(
        answer_in_response=in_resp,
        passage_copy=copy,
        answer_correct=correct,
        counterfactual=cf,
        cf_outcome=outcome,
        k_precision=kp,
        answer_f1=token_f1(response, ex.response) if ex.task == "extractive" else None,
        rouge_l=rouge_l_f1(response, ex.response) if ex.task != "extractive" else None,
        key_facts=key,
    )
    # the configured judges
    scores = judgment.scores if judgment is not None else {}
    faith = scores.get("faithfulness") if grounded else None
    faith = kp if grounded and faith is None else faith
    row["faith_judges"] = faith
    row["faithfulness"] = None if faith is None else (0.0 if correct is False else faith)
    row.update({f"score_{axis}": scores.get(axis) for axis in ("instruction", "faithfulness", "task")})
    row["combined"] = judgment.combined if judgment is not None else None
    by_judge = judgment.details.get("by_judge", {}) if judgment is not None else {}
    row.update({f"judge.{name}": value for name, value in by_judge.items()})
    why = judgment.details.get("why", {}) if judgment is not None else {}
    row.update({f"why.{name}": text for name, text in why.items()})
    return row


# ------------------------------------------------------------------------------------ metrics
Kind = Literal["rate", "mean"]


@dataclass(frozen=True)
class Metric:
    """One figure over rows. `units(row)` yields (unit id suffix, value) for the row's units (none
    where the metric does not apply); a rate's values are bools, a mean's floats.

    axis: "instruction", "faithfulness", "task" or "diagnostic". higher_is_better: None for a
    diagnostic without a direction. shared_with: the selection judges whose measure this metric
    shares (the report says so when one of them selected the training data)."""

    key: str
    label: str
    kind: Kind
    axis: str
    units: Callable[[Mapping[str, Any]], Iterable[tuple[str, Value]]] = field(repr=False, compare=False)
    description: str = ""
    higher_is_better: bool | None = True
    shared_with: tuple[str, ...] = ()

    def values(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, Value]:
        """unit id -> value over the rows of one model (ids pair across models)."""
        out: dict[str, Value] = {}
        for row in rows:
            for suffix, value in self.units(row):
                out[f"{row['example_id']}{suffix}"] = value
        return out


def _field(name: str, where: Callable[[Mapping[str, Any]], bool] = lambda r: True):
    def units(row: Mapping[str, Any]) -> Iterable[tuple[str, Value]]:
        v = row.get(name)
        return [("", v)] if v is not None and where(row) else []

    return units


def _per_instruction(name: str, keep: Callable[[str], bool] = lambda iid: True):
    def units(row: Mapping[str, Any]) -> Iterable[tuple[str, Value]]:
        return [
            (f"#{i}", bool(v))
            for i, (iid, v) in enumerate(zip(row.get("if_ids") or [], row.get(name) or [], strict=True))
            if keep(iid)
        ]

    return units


def _task(task: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda r: r.get("task") == task


def _outcome(kind: str):
    def units(row: Mapping[str, Any]) -> Iterable[tuple[str, Value]]:
        o = row.get("cf_outcome")
        return [("", o == kind)] if o is not None else []

    return units


METRICS: list[Metric] = [
    Metric(
        "if_prompt_acc",
        "IF prompt acc",
        "rate",
        "instruction",
        _field("if_pass"),
        "share of prompts with constraints whose every instruction is followed (IFEval strict)",
        shared_with=("rules",),
    ),
    Metric(
        "if_prompt_acc.instruction",
        "IF prompt acc (IF prompts)",
        "rate",
        "instruction",
        _field("if_pass", lambda r: r.get("kind") == "instruction"),
        "if_prompt_acc on instruction prompts (no context)",
        shared_with=("rules",),
    ),
    Metric(
        "if_prompt_acc.grounded",
        "IF prompt acc (grounded)",
        "rate",
        "instruction",
        _field("if_pass", lambda r: r.get("kind") == "grounded"),
        "if_prompt_acc on grounded prompts that carry a constraint",
        shared_with=("rules",),
    ),
    Metric(
        "if_instruction_acc",
        "IF instr acc",
        "rate",
        "instruction",
        _per_instruction("if_followed"),
        "share of single instructions followed (IFEval strict, instruction level)",
        shared_with=("rules",),
    ),
    Metric(
        "if_prompt_loose",
        "IF prompt loose",
        "rate",
        "instruction",
        _field("if_pass_loose"),
        "if_prompt_acc in IFEval's loose mode",
        shared_with=("rules",),
    ),
    Metric(
        "if_instruction_loose",
        "IF instr loose",
        "rate",
        "instruction",
        _per_instruction("if_followed_loose"),
        "if_instruction_acc in IFEval's loose mode",
        shared_with=("rules",),
    ),
    Metric(
        "faithfulness",
        "Faithfulness",
        "mean",
        "faithfulness",
        _field("faithfulness"),
        "grounded: the faithfulness judges' score, 0 for an extractive answer wrong against the passage",
    ),
    Metric(
        "faithfulness_extractive",
        "Faith (extr)",
        "mean",
        "faithfulness",
        _field("faithfulness", _task("extractive")),
        "faithfulness on extractive items",
    ),
    Metric(
        "faithfulness_abstractive",
        "Faith (abstr)",
        "mean",
        "faithfulness",
        _field("faithfulness", _task("abstractive")),
        "faithfulness on abstractive items",
    ),
    Metric(
        "answer_correct",
        "Answer correct (extr)",
        "rate",
        "faithfulness",
        _field("answer_correct"),
        "extractive: the passage's answer given, not a passage copy, not the memory answer",
        shared_with=("reference",),
    ),
    Metric(
        "counterfactual_rate",
        "Counterfactual: passage",
        "rate",
        "faithfulness",
        _outcome("passage"),
        "counterfactual passages answered with the passage's answer (not the model's memory)",
        shared_with=("reference",),
    ),
    Metric(
        "memory_rate",
        "Counterfactual: memory",
        "rate",
        "faithfulness",
        _outcome("memory"),
        "counterfactual passages answered from memory against the passage",
        higher_is_better=False,
    ),
    Metric(
        "answer_f1",
        "Answer F1 (extr)",
        "mean",
        "faithfulness",
        _field("answer_f1"),
        "extractive: SQuAD token F1 against the reference",
        shared_with=("reference",),
    ),
    Metric(
        "rouge_l_abstractive",
        "ROUGE-L (abstr)",
        "mean",
        "faithfulness",
        _field("rouge_l", _task("abstractive")),
        "abstractive: ROUGE-L F1 against the reference summary",
        shared_with=("reference",),
    ),
    Metric(
        "key_facts",
        "Key facts (abstr)",
        "mean",
        "faithfulness",
        _field("key_facts"),
        "abstractive: share of the article's key facts stated",
    ),
    Metric(
        "k_precision_extractive",
        "K-Prec (extr)",
        "mean",
        "faithfulness",
        _field("k_precision", _task("extractive")),
        "K-Precision on extractive items (gameable by copying)",
        shared_with=("k-precision",),
    ),
    Metric(
        "k_precision_abstractive",
        "K-Prec (abstr)",
        "mean",
        "faithfulness",
        _field("k_precision", _task("abstractive")),
        "K-Precision on abstractive items (gameable by copying)",
        shared_with=("k-precision",),
    ),
    Metric(
        "passage_copy_extractive",
        "Copy (extr)",
        "mean",
        "diagnostic",
        _field("passage_copy", _task("extractive")),
        "share of the passage reproduced",
        higher_is_better=None,
    ),
    Metric(
        "passage_copy_abstractive",
        "Copy (abstr)",
        "mean",
        "diagnostic",
        _field("passage_copy", _task("abstractive")),
        "share of the passage reproduced",
        higher_is_better=None,
    ),
    Metric("task", "Task", "mean", "task", _field("score_task"), "the task judges' score (all prompts)"),
    Metric(
        "combined", "Combined", "mean", "diagnostic", _field("combined"), "the judges' weighted mean, as in selection"
    ),
]
_BY_KEY = {m.key: m for m in METRICS}


def metric(key: str) -> Metric:
    """A metric of METRICS by key."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}; known: {sorted(_BY_KEY)}") from None


def family_of(instruction_id: str) -> str:
    """The constraint family of an IFEval id: 'change_case:english_lowercase' -> 'change_case'."""
    return instruction_id.split(":", 1)[0]


def family_metrics(rows: Iterable[Mapping[str, Any]], level: Literal["family", "id"] = "family") -> list[Metric]:
    """Instruction-level strict accuracy per constraint family (`if_family.<family>`) or per IFEval
    id (`if_id.<id>`), for the families / ids present in `rows`."""
    group = family_of if level == "family" else (lambda iid: iid)
    names = sorted({group(i) for r in rows for i in (r.get("if_ids") or [])})
    return [
        Metric(
            f"if_{level}.{name}",
            name,
            "rate",
            "instruction",
            _per_instruction("if_followed", lambda iid, name=name: group(iid) == name),
            f"instructions of {level} {name} followed (strict)",
            shared_with=("rules",),
        )
        for name in names
    ]


def judge_metrics(rows: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """Each configured judge's own mean score (`judge.<name>`); faithfulness judges per task type
    (`judge.<name>.extractive` / `.abstractive`), as the paper reports faithfulness."""
    rows = list(rows)
    names = sorted({k.removeprefix("judge.") for r in rows for k in r if k.startswith("judge.")})
    out = []
    for name in names:
        axis = JUDGE_AXES.get(name, "diagnostic")
        col = f"judge.{name}"
        if axis == "faithfulness":
            out += [
                Metric(
                    f"{col}.{t}",
                    f"{name} ({t[:5]})",
                    "mean",
                    axis,
                    _field(col, _task(t)),
                    f"the {name} judge's score on {t} items (not gated)",
                    shared_with=(name,),
                )
                for t in ("extractive", "abstractive")
            ]
        else:
            out.append(Metric(col, name, "mean", axis, _field(col), f"the {name} judge's score", shared_with=(name,)))
    return out


def metrics_for(rows: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """METRICS (with the judges a metric is built from added to its `shared_with`), then one
    metric per constraint family and per judge present in `rows`."""
    rows = list(rows)
    judges = sorted({k.removeprefix("judge.") for r in rows for k in r if k.startswith("judge.")})
    by_axis = {axis: tuple(j for j in judges if JUDGE_AXES.get(j) == axis) for axis in ("faithfulness", "task")}
    base = []
    for m in METRICS:
        extra: tuple[str, ...] = ()
        if m.key.startswith("faithfulness"):
            extra = by_axis["faithfulness"] or ("k-precision",)
        elif m.key == "task":
            extra = by_axis["task"]
        elif m.key == "combined":
            extra = tuple(judges)
        base.append(_with_shared(m, extra))
    return base + family_metrics(rows) + judge_metrics(rows)


def _with_shared(m: Metric, extra: tuple[str, ...]) -> Metric:
    if not extra:
        return m
    shared = tuple(dict.fromkeys(m.shared_with + extra))
    return Metric(m.key, m.label, m.kind, m.axis, m.units, m.description, m.higher_is_better, shared)


def point_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Point value of every metric over one model's rows (NaN-free: metrics without units are left
    out), plus the counts n_examples, n_if_prompts, n_extractive, n_abstractive, n_counterfactual."""
    out: dict[str, float] = {}
    for m in metrics_for(rows):
        vals = list(m.values(rows).values())
        if vals:
            out[m.key] = sum(float(v) for v in vals) / len(vals)
    out.update(
        n_examples=len(rows),
        n_if_prompts=sum(1 for r in rows if r.get("if_pass") is not None),
        n_extractive=sum(1 for r in rows if r.get("task") == "extractive" and r.get("kind") == "grounded"),
        n_abstractive=sum(1 for r in rows if r.get("task") == "abstractive" and r.get("kind") == "grounded"),
        n_counterfactual=sum(1 for r in rows if r.get("cf_outcome") is not None),
    )
    return out
