"""The judge protocol: score (example, candidate) pairs on one axis; combine axes with weights.

A judge is anything with a `name`, the `axis` it scores and `score(pairs) -> list[AxisScore]`
(a score in [0, 1] or None where the axis does not apply, with a rationale). The judges
themselves live beside this module: rules (IFEval), lexical (K-Precision, task score against the
reference), faithfulness (embedding, NLI), llm (an LLM over an OpenAI-compatible endpoint);
registry.py builds the ones a JudgeConfig names.

A faithfulness scorer is simpler still: `score(responses, contexts) -> [(score, reason)]`;
`FaithfulnessJudge` makes any of them a Judge on the faithfulness axis.

The combined score is the weighted mean over the axes that apply (paper: a weighted score of task
performance, faithfulness and instruction following; faithfulness only where a context exists).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from reset.data.records import AXES, Candidate, Example, Judgment, check_references

Pair = tuple[Example, Candidate]


@dataclass
class AxisScore:
    score: float | None
    rationale: str


class JudgeError(RuntimeError):
    """Some candidates could not be judged (e.g. an LLM judge exhausted its retries)."""


class Judge(Protocol):
    name: str
    axis: str

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]: ...


class FaithfulnessScorer(Protocol):
    """Scores how well each response is supported by its context: [(score in [0, 1], reason)]."""

    name: str

    def score(self, responses: Sequence[str], contexts: Sequence[str]) -> list[tuple[float, str]]: ...


def check_lengths(responses: Sequence[str], contexts: Sequence[str]) -> None:
    """A scorer's inputs must pair up one to one."""
    if len(responses) != len(contexts):
        raise ValueError(f"got {len(responses)} responses but {len(contexts)} contexts; they must pair up")


class FaithfulnessJudge:
    """Any FaithfulnessScorer as a Judge: axis "faithfulness", one batched call to the scorer for
    all pairs whose example has a context; None + "no context" for the others."""

    axis = "faithfulness"

    def __init__(self, scorer: FaithfulnessScorer, name: str | None = None):
        self.scorer = scorer
        self.name = name or scorer.name

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        out = [AxisScore(None, "no context") for _ in pairs]
        idx = [i for i, (ex, _) in enumerate(pairs) if ex.has_context]
        if not idx:
            return out
        results = self.scorer.score([pairs[i][1].text for i in idx], [pairs[i][0].context or "" for i in idx])
        if len(results) != len(idx):
            raise RuntimeError(
                f"faithfulness scorer {self.scorer.name!r} returned {len(results)} scores for {len(idx)} pairs"
            )
        for i, (value, reason) in zip(idx, results, strict=True):
            value = float(value)
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise RuntimeError(
                    f"faithfulness scorer {self.scorer.name!r} returned {value} (expected [0, 1]) for "
                    f"candidate {pairs[i][1].id}"
                )
            out[i] = AxisScore(value, reason)
        return out


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
    judges: Sequence[Judge],
    judge_weights: Mapping[str, float] | None = None,
) -> list[Judgment]:
    """Judge every candidate. Several judges on one axis are averaged (`judge_weights`, default 1
    each, over the judges whose score applies); the axes are combined with `weights`.
    Raises ValueError naming a candidate whose example is unknown."""
    check_references(examples, candidates)
    by_id = {e.id: e for e in examples}
    pairs = [(by_id[c.example_id], c) for c in candidates]
    if not judges:
        raise ValueError("judge: no judges given")
    jw = dict(judge_weights or {})
    per_judge = [j.score(pairs) for j in judges]
    failed = [
        (j.name, pairs[i][1].id, r.error)
        for j, results in zip(judges, per_judge, strict=True)
        for i, r in enumerate(results)
        if getattr(r, "error", "")
    ]
    if failed:  # never let a failed judgment pass as "axis not applicable"
        name, cid, why = failed[0]
        raise JudgeError(
            f"{len(failed)} of {len(pairs) * len(judges)} judgments failed, e.g. {name} on {cid}: {why}. "
            "Judgments that succeeded are cached; re-run to resume."
        )
    out = []
    for i, (ex, cand) in enumerate(pairs):
        sums: dict[str, list[float]] = {axis: [0.0, 0.0] for axis in AXES}
        by_judge: dict[str, float | None] = {}
        why: dict[str, str] = {}
        for j, results in zip(judges, per_judge, strict=True):
            r = results[i]
            by_judge[j.name] = r.score
            why[j.name] = r.rationale
            w = jw.get(j.name, 1.0)
            if r.score is not None and w > 0:
                sums[j.axis][0] += w * r.score
                sums[j.axis][1] += w
        scores: dict[str, float | None] = {a: (num / den if den else None) for a, (num, den) in sums.items()}
        out.append(
            Judgment(
                candidate_id=cand.id,
                example_id=ex.id,
                scores=scores,
                combined=combine(scores, weights),
                rationale="; ".join(f"{name}: {text}" for name, text in why.items()),
                details={"by_judge": by_judge, "why": why, "decoding": cand.decoding},
            )
        )
    return out
