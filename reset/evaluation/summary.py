"""Evaluated models ("arms") on the same held-out examples: every figure with its 95% interval, and
every arm paired against a reference arm (default "mtl") on the same units.

    s = summarize({"base": rows, "mtl": rows, "reset": rows}, reference="mtl",
                  selection_judges=judge_cfg.judges)
    s.estimates["reset"]["if_prompt_acc"]      -> Estimate (value, low, high, n, method)
    s.comparisons["reset"]["if_prompt_acc"]    -> PairedTest (diff, low, high, p_value, n, ...)
    verdict(s, "reset")   -> 'ReSet vs MTL: IF +0.07 [+0.01, +0.13] (p=0.03); faithfulness ...'
    s.to_dict()           -> JSON-able, with the metric specs and which ones a selection judge shares
    flat_metrics(s)       -> {"reset.if_prompt_acc": ..., "reset.if_prompt_acc.low": ...,
                              "reset.vs_mtl.if_prompt_acc.diff": ..., ...} for MLflow
    holm_family(s, primary=("reset",)) -> every other arm x axis against the reference with its raw
                             and Holm-adjusted p (the primary comparison is the gate's, not in the family)

Rows are evaluate()'s (one per model and example, see metrics.py). Rates get Wilson intervals and
McNemar's score test with Tango's interval of the paired difference; means get percentile
bootstrap intervals and the paired t-test with its t interval (each pair from one statistic, so an
interval that excludes 0 always goes with p < 0.05). Pairs are the units (examples, or instructions)
both arms have; n says how many. A metric that shares its measure with a judge the selection step
used (`selection_judges`, e.g. JudgeConfig.judges, plus any gate names) is listed in
`Summary.selection[key]`: a gain there is partly the selection's own yardstick.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.evaluation.metrics import PRIMARY, Metric, metrics_for
from reset.evaluation.statistics import (
    CONFIDENCE,
    N_RESAMPLES,
    Estimate,
    PairedTest,
    holm,
    mean_estimate,
    paired_mean_test,
    paired_rate_test,
    rate_estimate,
)

# How arms are named in verdicts, tables and plots (any other name is shown as it is).
ARM_LABELS = {
    "base": "base", "if-only": "IF-only", "cd-only": "CD-only", "cd-if": "CD->IF", "if-cd": "IF->CD",
    "mtl": "MTL", "reset": "ReSet", "reset-s": "ReSet-S", "control": "MTL+steps (control)",
    "reset-2r": "ReSet, 2 rounds",
}
# The short names of the two axes in a verdict line.
AXIS_NAMES = {"if_prompt_acc": "IF", "faithfulness": "faithfulness"}


def arm_label(arm: str, labels: Mapping[str, str] | None = None) -> str:
    return (labels or {}).get(arm) or ARM_LABELS.get(arm, arm)


@dataclass
class Summary:
    """Estimates per arm and metric; paired tests of every other arm against `reference`."""

    arms: list[str]
    reference: str | None
    metrics: list[Metric]
    estimates: dict[str, dict[str, Estimate]]
    comparisons: dict[str, dict[str, PairedTest]]
    selection: dict[str, tuple[str, ...]] = field(default_factory=dict)
    n_examples: dict[str, int] = field(default_factory=dict)
    confidence: float = CONFIDENCE
    labels: dict[str, str] = field(default_factory=dict)

    def metric(self, key: str) -> Metric:
        for m in self.metrics:
            if m.key == key:
                return m
        raise KeyError(f"no metric {key!r} in this summary")

    def label(self, arm: str) -> str:
        return arm_label(arm, self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arms": self.arms,
            "labels": {a: self.label(a) for a in self.arms},
            "reference": self.reference,
            "confidence": self.confidence,
            "n_examples": self.n_examples,
            "metrics": [{"key": m.key, "label": m.label, "kind": m.kind, "axis": m.axis,
                         "description": m.description, "higher_is_better": m.higher_is_better,
                         "shared_with": list(m.shared_with), "selection_judges": list(self.selection.get(m.key, ()))}
                        for m in self.metrics],
            "estimates": {a: {k: e.to_dict() for k, e in es.items()} for a, es in self.estimates.items()},
            "comparisons": {a: {k: t.to_dict() for k, t in ts.items()} for a, ts in self.comparisons.items()},
        }


def summarize(
    rows_by_arm: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    reference: str | None = "mtl",
    metrics: Sequence[Metric] | None = None,
    selection_judges: Collection[str] = (),
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    labels: Mapping[str, str] | None = None,
) -> Summary:
    """Every metric of every arm with its interval, and each arm against `reference` (left out
    when None or not among the arms). `metrics` defaults to metrics_for(all rows)."""
    if not rows_by_arm:
        raise ValueError("summarize: no arms")
    arms = list(rows_by_arm)
    all_rows = [r for rows in rows_by_arm.values() for r in rows]
    specs = list(metrics) if metrics is not None else metrics_for(all_rows)
    values = {a: {m.key: m.values(rows_by_arm[a]) for m in specs} for a in arms}
    estimates: dict[str, dict[str, Estimate]] = {}
    for a in arms:
        estimates[a] = {}
        for i, m in enumerate(specs):
            v = list(values[a][m.key].values())
            estimates[a][m.key] = (rate_estimate([bool(x) for x in v], confidence) if m.kind == "rate" else
                                   mean_estimate([float(x) for x in v], confidence=confidence,
                                                 n_resamples=n_resamples, seed=seed + i))
    comparisons: dict[str, dict[str, PairedTest]] = {}
    ref = reference if reference in rows_by_arm else None
    if ref is not None:
        for a in arms:
            if a == ref:
                continue
            comparisons[a] = {}
            for m in specs:
                mine, theirs = values[a][m.key], values[ref][m.key]
                ids = sorted(set(mine) & set(theirs))
                if m.kind == "rate":
                    t = paired_rate_test([bool(mine[u]) for u in ids], [bool(theirs[u]) for u in ids], confidence)
                else:
                    t = paired_mean_test([float(mine[u]) for u in ids], [float(theirs[u]) for u in ids],
                                         confidence)
                comparisons[a][m.key] = t
    chosen = set(selection_judges)
    selection = {m.key: tuple(j for j in m.shared_with if j in chosen) for m in specs}
    return Summary(arms, ref, specs, estimates, comparisons, {k: v for k, v in selection.items() if v},
                   {a: len(rows_by_arm[a]) for a in arms}, confidence, dict(labels or {}))


def verdict(summary: Summary, arm: str = "reset", metrics: Sequence[str] = PRIMARY) -> str:
    """One line: 'ReSet vs MTL: IF +0.070 [+0.012, +0.128] (p=0.030); faithfulness ...' (three
    digits: an interval end near 0 shows on which side it lies). 'n/a' without paired units."""
    if summary.reference is None:
        raise ValueError("verdict: the summary has no reference arm")
    if arm not in summary.comparisons:
        raise KeyError(f"verdict: no comparison for arm {arm!r} (have {sorted(summary.comparisons)})")
    parts = []
    for key in metrics:
        name = AXIS_NAMES.get(key, summary.metric(key).label)
        t = summary.comparisons[arm].get(key)
        parts.append(f"{name} {t.format(3) if t is not None else 'n/a'}")
    return f"{summary.label(arm)} vs {summary.label(summary.reference)}: " + "; ".join(parts)


def verdicts(summary: Summary, metrics: Sequence[str] = PRIMARY) -> list[str]:
    """verdict() for every arm compared with the reference, in arm order."""
    return [verdict(summary, a, metrics) for a in summary.arms if a in summary.comparisons]


@dataclass(frozen=True)
class FamilyRow:
    """One comparison of the multiplicity family: arm vs the reference on one axis."""

    arm: str
    axis: str
    test: PairedTest
    p_holm: float


def holm_family(summary: Summary, primary: Collection[str] = ("reset",), axes: Sequence[str] = PRIMARY,
                extra: Mapping[str, Mapping[str, PairedTest]] | None = None) -> list[FamilyRow]:
    """Every arm x axis comparison against the reference except the `primary` arms' (the gate tests
    the pre-declared primary hypothesis), with Holm-adjusted p over the whole family. `extra`: more
    comparisons by name (e.g. {"reset vs control": {axis: test}}) that join the family."""
    rows = [(a, k, summary.comparisons[a][k]) for a in summary.arms if a in summary.comparisons
            and a not in primary for k in axes if k in summary.comparisons[a]]
    rows += [(name, k, t) for name, tests in (extra or {}).items() for k, t in tests.items() if k in axes]
    adjusted = holm([t.p_value for _, _, t in rows])
    return [FamilyRow(a, k, t, p) for (a, k, t), p in zip(rows, adjusted, strict=True)]


def axis_outcome(test: PairedTest, higher_is_better: bool | None = True) -> str:
    """"better" / "worse" (significant at the summary's level, in the metric's direction),
    "no significant difference", or "n/a"."""
    if test.n == 0 or math.isnan(test.p_value):
        return "n/a"
    if not test.significant or higher_is_better is None:
        return "no significant difference"
    up = test.diff > 0
    return "better" if up == bool(higher_is_better) else "worse"


def identical_answers(rows_by_arm: Mapping[str, Sequence[Mapping[str, Any]]],
                      reference: str | None = "mtl") -> dict[str, tuple[int, int]]:
    """arm -> (answers byte-identical to the reference arm's, examples both answered): an arm that
    repeats its starting checkpoint's answers cannot differ from it, whatever the test says."""
    if reference not in rows_by_arm:
        return {}
    ref = {r["example_id"]: r["response"] for r in rows_by_arm[reference]}
    out = {}
    for arm, rows in rows_by_arm.items():
        if arm == reference:
            continue
        both = [r for r in rows if r["example_id"] in ref]
        out[arm] = (sum(1 for r in both if r["response"] == ref[r["example_id"]]), len(both))
    return out


def flat_metrics(summary: Summary, keys: Iterable[str] | None = None) -> dict[str, float]:
    """Finite numbers for MLflow: <arm>.<key>, <arm>.<key>.low / .high / .n and
    <arm>.vs_<reference>.<key>.diff / .low / .high / .p."""
    wanted = set(keys) if keys is not None else None
    out: dict[str, float] = {}

    def put(name: str, value: float) -> None:
        if isinstance(value, int | float) and math.isfinite(value):
            out[name] = value

    for a in summary.arms:
        for k, e in summary.estimates[a].items():
            if wanted is not None and k not in wanted:
                continue
            put(f"{a}.{k}", e.value)
            put(f"{a}.{k}.low", e.low)
            put(f"{a}.{k}.high", e.high)
            put(f"{a}.{k}.n", e.n)
        for k, t in summary.comparisons.get(a, {}).items():
            if wanted is not None and k not in wanted:
                continue
            base = f"{a}.vs_{summary.reference}.{k}"
            put(f"{base}.diff", t.diff)
            put(f"{base}.low", t.low)
            put(f"{base}.high", t.high)
            put(f"{base}.p", t.p_value)
    return out


def unit_values(summary: Summary, rows_by_model: Mapping[str, Sequence[Mapping[str, Any]]]
                ) -> dict[str, dict[str, Any]]:
    """arm -> primary metric -> {unit: value}: what the experiment's report pools across seeds."""
    have = {m.key for m in summary.metrics}
    return {
        arm: {k: summary.metric(k).values(rows) for k in PRIMARY if k in have} for arm, rows in rows_by_model.items()
    }
