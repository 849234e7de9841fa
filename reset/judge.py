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


class JudgeError(RuntimeError):
    """Some candidates could not be judged (e.g. an LLM judge exhausted its retries)."""


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


def build_judges(cfg, cache_dir: str = "") -> list[Judge]:
    """The judges named in a JudgeConfig (`judge.judges`), constructed with their settings. LLM
    judges built together share one ledger (budget, counters) and one cache connection."""
    llm: dict[str, Judge] = {}
    llm_axes = [n.removeprefix("llm-") for n in cfg.judges if n.startswith("llm-")]
    if llm_axes:
        from reset import llm_judge
        from reset.config import parse

        lcfg = parse(llm_judge.LLMJudgeConfig, {**cfg.llm, "axes": llm_axes}, "judge.llm")
        llm = {j.name: j for j in llm_judge.llm_judges(lcfg)}
    out: list[Judge] = []
    for name in cfg.judges:
        if name == "rules":
            out.append(InstructionRules())
        elif name == "k-precision":
            out.append(KPrecision())
        elif name == "reference":
            out.append(ReferenceTask())
        elif name in ("embedding", "nli"):
            from reset import faithfulness

            out.append(faithfulness.build_judge(name, cfg, cache_dir))
        elif name in llm:
            out.append(llm[name])
        else:  # config validation names the key; this is a programming error
            raise ValueError(f"unknown judge {name!r}")
    return out


def close_judges(judges: Sequence[Judge]) -> None:
    """Release what judges hold open (the LLM judges' cache connection)."""
    for cache in {id(c): c for j in judges if (c := getattr(j, "cache", None)) is not None}.values():
        cache.close()


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
    judge_weights: Mapping[str, float] | None = None,
) -> list[Judgment]:
    """Judge every candidate. Several judges on one axis are averaged (`judge_weights`, default 1
    each, over the judges whose score applies); the axes are combined with `weights`.
    Raises ValueError naming a candidate whose example is unknown."""
    by_id = {e.id: e for e in examples}
    missing = [c.id for c in candidates if c.example_id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} candidates refer to unknown examples, e.g. {missing[:3]}")
    pairs = [(by_id[c.example_id], c) for c in candidates]
    judges = list(judges or default_judges())
    jw = dict(judge_weights or {})
    per_judge = [j.score(pairs) for j in judges]
    failed = [(j.name, pairs[i][1].id, r.error) for j, results in zip(judges, per_judge, strict=True)
              for i, r in enumerate(results) if getattr(r, "error", "")]
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
        reasons = []
        for j, results in zip(judges, per_judge, strict=True):
            r = results[i]
            by_judge[j.name] = r.score
            reasons.append(f"{j.name}: {r.rationale}")
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
                rationale="; ".join(reasons),
                details={"by_judge": by_judge, "decoding": cand.decoding},
            )
        )
    return out
