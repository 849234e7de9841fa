"""Judges: score (example, candidate) pairs on three axes and combine them with weights.

A judge is anything with a `name`, the `axis` it scores and `score(pairs) -> list[AxisScore]`
(a score in [0, 1] or None where the axis does not apply, with a rationale). Built in:

  InstructionRules     instruction following: share of the example's verifiable constraints
                       (IFEval ids, see reset.instructions) that the response satisfies.
  KPrecision           faithfulness: share of response tokens found in the context; only where a
                       context exists.
  ReferenceTask        task quality against the reference (token F1 for extractive tasks,
                       ROUGE-L F1 otherwise); both fall when a whole passage is copied. Where the
                       example names its gold answer span (meta["answer"]), the score is multiplied
                       by the answer's recall, so a fluent answer from memory that contradicts the
                       passage scores near 0 however many words it shares with the reference.

The combined score is the weighted mean over the axes that apply (paper: a weighted score of task
performance, faithfulness and instruction following; faithfulness only where a context exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from reset import instructions, scoring
from reset.records import AXES, Candidate, Example, Judgment

Pair = tuple[Example, Candidate]


@dataclass
class AxisScore:
    score: float | None
    rationale: str


class Judge(Protocol):
    name: str
    axis: str

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]: ...


class InstructionRules:
    name = "rules"
    axis = "instruction"

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        out = []
        for ex, cand in pairs:
            value, results = instructions.instruction_score(ex.constraints, cand.text)
            if value is None:
                out.append(AxisScore(None, "no verifiable instructions"))
                continue
            failed = [r["id"] for r in results if not r["followed"]]
            why = f"{len(results) - len(failed)}/{len(results)} instructions followed"
            out.append(AxisScore(value, why + (f" (failed: {', '.join(failed)})" if failed else "")))
        return out


class KPrecision:
    name = "k-precision"
    axis = "faithfulness"

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        out = []
        for ex, cand in pairs:
            if not ex.has_context:
                out.append(AxisScore(None, "no context"))
            else:
                v = scoring.k_precision(cand.text, ex.context or "")
                out.append(AxisScore(v, f"K-Precision {v:.2f} (content words)"))
        return out


class ReferenceTask:
    name = "reference"
    axis = "task"

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        out = []
        for ex, cand in pairs:
            v = scoring.task_score(cand.text, ex.response, ex.task)
            why = f"{'token F1' if ex.task == 'extractive' else 'ROUGE-L F1'} {v:.2f} vs reference"
            answer = ex.meta.get("answer")
            if isinstance(answer, str) and answer.strip():
                recall = scoring.answer_recall(cand.text, answer)
                v = v * recall
                why += f", answer recall {recall:.2f}"
            out.append(AxisScore(v, why))
        return out


def default_judges() -> list[Judge]:
    return [InstructionRules(), KPrecision(), ReferenceTask()]


def combine(scores: Mapping[str, float | None], weights: Mapping[str, float]) -> float:
    """Weighted mean over the axes that apply (score not None, weight > 0); 0.0 if none apply."""
    num = den = 0.0
    for axis, value in scores.items():
        w = weights.get(axis, 0.0)
        if value is not None and w > 0:
            num += w * value
            den += w
    return num / den if den else 0.0


def judge(
    examples: Sequence[Example],
    candidates: Sequence[Candidate],
    weights: Mapping[str, float],
    judges: Sequence[Judge] | None = None,
) -> list[Judgment]:
    """Judge every candidate; raises ValueError naming a candidate whose example is unknown."""
    by_id = {e.id: e for e in examples}
    missing = [c.id for c in candidates if c.example_id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} candidates refer to unknown examples, e.g. {missing[:3]}")
    pairs = [(by_id[c.example_id], c) for c in candidates]
    judges = list(judges or default_judges())
    per_judge = [j.score(pairs) for j in judges]
    out = []
    for i, (ex, cand) in enumerate(pairs):
        scores: dict[str, float | None] = dict.fromkeys(AXES)
        reasons = []
        for j, results in zip(judges, per_judge, strict=True):
            r = results[i]
            scores[j.axis] = r.score
            reasons.append(f"{j.axis}: {r.rationale}")
        out.append(
            Judgment(
                candidate_id=cand.id,
                example_id=ex.id,
                scores=scores,
                combined=combine(scores, weights),
                rationale="; ".join(reasons),
                details={"judges": [j.name for j in judges], "decoding": cand.decoding},
            )
        )
    return out
