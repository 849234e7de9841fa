"""The promotion gate: a test with known error rates, on both axes of the paper.

    rule = GateRule(margins={"if_prompt_acc": 0.03, "faithfulness": 0.03}, use=1)
    decision = gate(summary, "reset", rule, identical=(0, 300))        # against summary.reference
    decision.passed, decision.reason   # 'non-inferior on both axes (margins 0.03 / 0.03), superior on IF'

The decision rule (the pre-declared primary hypothesis: the candidate is non-inferior to the
reference on both axes and superior on at least one):

1. A candidate whose answers on the test split are byte-identical to the reference's, or whose
   weights are (the same content digest), never passes, and the reason says so: nothing about
   it can differ from the reference.
2. Non-inferiority on each axis: the one-sided lower confidence bound of the paired difference
   (the lower end of the two-sided 1 - alpha interval: 97.5% one-sided at alpha 0.05; Tango's
   score bound for instruction following, the paired t bound for faithfulness) is above -margin.
   Both must hold (an intersection-union test: no multiplicity adjustment is needed).
3. Superiority (`superiority`, on by default against MTL): the one-sided p-value of "the
   difference is <= 0" on at least one axis, Holm-adjusted over the two axes, is <= alpha / 2.
   So a candidate exactly as good as the reference passes with probability <= alpha / 2.
4. Alpha spending over uses of one test split (`use`, counted in the registry per registered model
   and test digest): use k is tested at alpha_k = alpha * 6 / (pi^2 k^2), which sums to alpha over
   all uses, so promoting again and again against the same frozen split cannot push the chance of
   ever promoting a no-better model above alpha / 2 (a union bound). docs/design.md has the
   simulated error rates (tests/test_gate.py computes them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.evaluation.metrics import PRIMARY
from reset.evaluation.statistics import PairedTest, holm
from reset.evaluation.summary import AXIS_NAMES, Summary

DEFAULT_MARGIN = 0.03


def spent_alpha(alpha: float, use: int) -> float:
    """The two-sided level of the `use`-th test of one test split: alpha * 6 / (pi^2 use^2)
    (sum over all uses: alpha)."""
    if use < 1:
        raise ValueError(f"use counts from 1, got {use}")
    return alpha * 6.0 / (math.pi ** 2 * use * use)


@dataclass(frozen=True)
class GateRule:
    """The gate's settings (register.margin_* / alpha / require_superiority / alpha_spending)."""

    margins: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(PRIMARY, DEFAULT_MARGIN))
    alpha: float = 0.05
    superiority: bool = True
    spending: bool = True
    use: int = 1
    axes: Sequence[str] = PRIMARY

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.use < 1:
            raise ValueError(f"use counts from 1, got {self.use}")
        bad = {a: m for a, m in self.margins.items() if not 0.0 <= m < 1.0}
        if bad:
            raise ValueError(f"margins must be in [0, 1): {bad}")

    @property
    def level(self) -> float:
        """The two-sided alpha of this use (the one-sided bounds and tests are at level / 2)."""
        return spent_alpha(self.alpha, self.use) if self.spending else self.alpha

    def margin(self, axis: str) -> float:
        return float(self.margins.get(axis, DEFAULT_MARGIN))

    def describe(self) -> str:
        """The rule in words, e.g. 'non-inferior on both axes (margins 0.03 / 0.03) and superior on at
        least one (one-sided 2.5%, Holm)'."""
        ms = " / ".join(f"{self.margin(a):.2f}" for a in self.axes)
        sup = " and superior on at least one (Holm)" if self.superiority else ""
        use = f"; use {self.use} of this test split" if self.use > 1 and self.spending else ""
        return f"non-inferior on both axes (margins {ms}){sup}, one-sided {_pct(self.level / 2)}{use}"

    def to_dict(self) -> dict[str, Any]:
        return {"margins": {a: self.margin(a) for a in self.axes}, "alpha": self.alpha,
                "superiority": self.superiority, "spending": self.spending, "use": self.use,
                "level": self.level, "axes": list(self.axes)}


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


@dataclass
class GateDecision:
    passed: bool
    reason: str
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)  # axis -> diff, low, high, p, margin, ...
    rule: dict[str, Any] = field(default_factory=dict)

    def tags(self, prefix: str) -> dict[str, str]:
        """MLflow tags: `<prefix>.<axis>` = '+0.07 [+0.01, +0.13] p=0.03' (the gate's interval)."""
        return {f"{prefix}.{axis}": f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={d['p']:.3g}"
                for axis, d in self.deltas.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "deltas": self.deltas, "rule": self.rule}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateDecision:
        return cls(bool(d["passed"]), str(d["reason"]), dict(d.get("deltas", {})), dict(d.get("rule", {})))


def decide(tests: Mapping[str, PairedTest], rule: GateRule, *, against: str = "the reference",
           identical: tuple[int, int] | None = None, same_weights: bool = False) -> GateDecision:
    """The gate on paired tests per axis (candidate minus reference; see the module docstring).
    `identical`: (answers byte-identical to the reference's, answers compared)."""
    info = rule.to_dict()
    if same_weights:
        return GateDecision(False, f"weights identical to {against}'s (the same content digest): nothing can "
                                   "differ", {}, info)
    if identical is not None and identical[1] > 0 and identical[0] == identical[1]:
        return GateDecision(False, f"answers byte-identical to {against}'s on all {identical[1]} test prompts: "
                                   "the candidate cannot differ from it", {}, info)
    level = rule.level
    deltas: dict[str, dict[str, Any]] = {}
    missing, not_ni = [], []
    for axis in rule.axes:
        t = tests.get(axis)
        name = AXIS_NAMES.get(axis, axis)
        if t is None or t.n == 0 or math.isnan(t.diff) or math.isnan(t.low):
            missing.append(name)
            continue
        at = t.at(1.0 - level)
        m = rule.margin(axis)
        deltas[axis] = {"diff": t.diff, "low": at.low, "high": at.high, "p": t.p_value, "n": t.n, "margin": m,
                        "confidence": 1.0 - level, "p_noninferior": t.p_above(-m), "p_superior": t.p_above(0.0),
                        "noninferior": at.low > -m}
        if not at.low > -m:
            not_ni.append(f"{name} (lower bound {at.low:+.3f} <= -{m:.2f})")
    if missing:
        return GateDecision(False, f"no paired figure against {against} on {', '.join(missing)}", deltas, info)
    if not_ni:
        return GateDecision(False, f"not shown non-inferior to {against} on {', '.join(not_ni)}; rule: "
                                   f"{rule.describe()}", deltas, info)
    margins = " / ".join(f"{rule.margin(a):.2f}" for a in rule.axes)
    head = f"non-inferior to {against} on both axes (margins {margins})"
    if not rule.superiority:
        return GateDecision(True, head, deltas, info)
    adjusted = holm([deltas[a]["p_superior"] for a in rule.axes])
    superior = []
    for a, p in zip(rule.axes, adjusted, strict=True):
        deltas[a]["p_superior_holm"] = p
        deltas[a]["superior"] = p <= level / 2
        if p <= level / 2:
            superior.append(f"{AXIS_NAMES.get(a, a)} (Holm p={p:.3g})")
    if not superior:
        ps = ", ".join(f"{AXIS_NAMES.get(a, a)} {p:.3g}" for a, p in zip(rule.axes, adjusted, strict=True))
        use = f", use {rule.use} of this test split" if rule.use > 1 and rule.spending else ""
        return GateDecision(False, f"{head}, but not superior on either (one-sided Holm p: {ps}; needs <= "
                                   f"{level / 2:.3g}{use})", deltas, info)
    return GateDecision(True, f"{head}, superior on {', '.join(superior)}", deltas, info)


def gate(summary: Summary, candidate: str, rule: GateRule | None = None, *,
         identical: tuple[int, int] | None = None, same_weights: bool = False) -> GateDecision:
    """decide() for `candidate` against `summary.reference` on the summary's paired tests."""
    rule = rule or GateRule()
    ref = summary.reference
    if ref is None or candidate not in summary.comparisons:
        return GateDecision(False, f"no paired comparison of {candidate} against a reference", {}, rule.to_dict())
    return decide(summary.comparisons[candidate], rule, against=summary.label(ref), identical=identical,
                  same_weights=same_weights)
