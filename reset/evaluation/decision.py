"""A run's decision from its evaluation rows: the comparison, the gates and the lines a user reads.

    v = run_decision(rows_by_model, rules=rules_from_config(register_cfg, use=2),
                     same_weights={"mtl": False}, split="test")
    v.summary            every figure with its interval, each model paired with MTL
    v.gates              reference -> GateDecision (MTL, and the champion when it was re-scored)
    v.lines              the verdict lines, the candidate's first
    v.words()            'non-inferior to MTL on both axes (margins 0.03 / 0.03), superior on IF (Holm p=0.004)'

No MLflow and no files: the evaluate step (reset/steps.py) logs and writes what this returns, the
registry acts on `gates`, and tests call it on rows they build.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.config import RegisterConfig
from reset.evaluation.gate import GateDecision, GateRule, gate
from reset.evaluation.metrics import PRIMARY
from reset.evaluation.summary import Summary, identical_answers, summarize, verdicts

CHAMPION = "champion"


def rules_from_config(rcfg: RegisterConfig | None, use: int = 1) -> dict[str, GateRule]:
    """The gate rules of register.*: against the reference (MTL) and against the champion."""
    if rcfg is None:
        rcfg = RegisterConfig()
    margins = {PRIMARY[0]: rcfg.margin_if, PRIMARY[1]: rcfg.margin_faithfulness}
    common = {"margins": margins, "alpha": rcfg.alpha, "spending": rcfg.alpha_spending, "use": max(1, use)}
    return {"reference": GateRule(superiority=rcfg.require_superiority, **common),
            CHAMPION: GateRule(superiority=rcfg.champion_superiority, **common)}


@dataclass
class RunDecision:
    summary: Summary
    vs_champion: Summary | None
    gates: dict[str, GateDecision]
    lines: list[str]
    identical: dict[str, tuple[int, int]] = field(default_factory=dict)
    split: str = "test"
    use: int = 1

    def words(self) -> str:
        """Each gate's outcome in words, the reference's first."""
        return "; ".join(g.reason for g in self.gates.values())

    def to_dict(self) -> dict[str, Any]:
        return {"gates": {k: g.to_dict() for k, g in self.gates.items()}, "verdicts": self.lines,
                "identical_answers": {k: list(v) for k, v in self.identical.items()}, "split": self.split,
                "test_use": self.use, "decision": self.words()}


def run_decision(rows_by_model: Mapping[str, Sequence[Mapping[str, Any]]], *, reference: str = "mtl",
                 candidate: str = "reset", rules: Mapping[str, GateRule] | None = None,
                 selection_judges: Collection[str] = (), same_weights: Mapping[str, bool] | None = None,
                 labels: Mapping[str, str] | None = None, split: str = "test") -> RunDecision:
    """Summarize the models against `reference`, gate `candidate` against it (and against the
    re-scored champion when its rows are there), and write the verdict lines."""
    rules = dict(rules or rules_from_config(None))
    same = dict(same_weights or {})
    summary = summarize(rows_by_model, reference=reference, selection_judges=selection_judges, labels=labels)
    lines = verdicts(summary) if summary.reference else []
    identical = identical_answers(rows_by_model, reference)
    gates: dict[str, GateDecision] = {}
    vs_champ = None
    if candidate in summary.comparisons:
        gates[reference] = gate(summary, candidate, rules["reference"], identical=identical.get(candidate),
                                same_weights=same.get(reference, False))
        if CHAMPION in rows_by_model:
            vs_champ = summarize(rows_by_model, reference=CHAMPION, selection_judges=selection_judges, labels=labels)
            ident = identical_answers(rows_by_model, CHAMPION).get(candidate)
            gates[CHAMPION] = gate(vs_champ, candidate, rules[CHAMPION], identical=ident,
                                   same_weights=same.get(CHAMPION, False))
            lines.append(next(x for x in verdicts(vs_champ) if x.startswith(vs_champ.label(candidate) + " ")))
    # the candidate's verdict first (the CLI's verdict line), the other arms after it
    lines.sort(key=lambda x: not x.startswith(summary.label(candidate) + " "))
    return RunDecision(summary, vs_champ, gates, lines, identical, split, rules["reference"].use)
