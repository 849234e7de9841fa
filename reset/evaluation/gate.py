"""The promotion gate: is a candidate arm at least as good as each arm it must beat, on both axes?

    decision = gate(summary_vs_mtl, "reset", tolerance=0.0)               # the run's own verdict
    decision = gate(summary_vs_champion, "reset", require_significant=True)

A candidate passes against a reference when, on every primary axis (instruction following and
faithfulness), its paired difference is >= -tolerance (the point estimate: a model that ties or
trails does not pass), and, with `require_significant`, when it is also significantly better
(paired p < 0.05) on at least one axis. The decision carries the deltas with their intervals, for
the registry's tags and the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.evaluation.metrics import PRIMARY
from reset.evaluation.summary import AXIS_NAMES, Summary


@dataclass
class GateDecision:
    passed: bool
    reason: str
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)  # axis -> diff, low, high, p

    def tags(self, prefix: str) -> dict[str, str]:
        """MLflow tags: `<prefix>.<axis>` = '+0.07 [+0.01, +0.13] p=0.03'."""
        return {f"{prefix}.{axis}": f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={d['p']:.3g}"
                for axis, d in self.deltas.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "deltas": self.deltas}


def gate(summary: Summary, candidate: str, *, axes: Sequence[str] = PRIMARY, tolerance: float = 0.0,
         require_significant: bool = False) -> GateDecision:
    """Does `candidate` pass against `summary.reference` (see the module docstring)?"""
    ref = summary.reference
    if ref is None or candidate not in summary.comparisons:
        return GateDecision(False, f"no paired comparison of {candidate} against a reference")
    against = summary.label(ref)
    deltas: dict[str, dict[str, float]] = {}
    worse, better = [], []
    for axis in axes:
        t = summary.comparisons[candidate].get(axis)
        name = AXIS_NAMES.get(axis, axis)
        if t is None or t.n == 0 or math.isnan(t.diff):
            worse.append(f"{name}: no paired figure")
            continue
        deltas[axis] = {"diff": t.diff, "low": t.low, "high": t.high, "p": t.p_value, "n": t.n}
        if t.diff < -tolerance:
            worse.append(f"{name} {t.format()}")
        elif t.diff > 0 and t.significant:
            better.append(name)
    if worse:
        return GateDecision(False, f"worse than {against}: " + "; ".join(worse), deltas)
    if require_significant and not better:
        return GateDecision(False, f"no worse than {against}, but not significantly better on any axis", deltas)
    how = f"significantly better on {', '.join(better)}" if better else "no worse on " + ", ".join(
        AXIS_NAMES.get(a, a) for a in axes)
    return GateDecision(True, f"{how} than {against}", deltas)
