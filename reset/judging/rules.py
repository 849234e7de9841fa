"""Instruction following by rules: IFEval's own checkers (reset.ifeval), no model needed."""

from __future__ import annotations

from collections.abc import Sequence

from reset import ifeval
from reset.judging.base import AxisScore, Pair


class InstructionRules:
    """Share of the example's verifiable constraints (IFEval ids) that the response follows
    (strict); None where the example has none."""

    name = "rules"
    axis = "instruction"

    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        out = []
        for ex, cand in pairs:
            value, results = ifeval.instruction_score(ex.constraints, cand.text)
            if value is None:
                out.append(AxisScore(None, "no verifiable instructions"))
                continue
            failed = [r["id"] for r in results if not r["followed"]]
            why = f"{len(results) - len(failed)}/{len(results)} instructions followed"
            out.append(AxisScore(value, why + (f" (failed: {', '.join(failed)})" if failed else "")))
        return out
