"""Selection gates: pass / fail facts about a candidate that must hold before its scores count.

    gate_flags(example, text) -> {"if_pass": bool | None, "answer_correct": bool | None, "no_copy": bool | None}

if_pass        every verifiable instruction of the example followed (IFEval's strict checkers);
               None where the example has none.
answer_correct an extractive answer correct against its passage (the gold answer in it, not a
               copy of the passage, not the memory answer on a counterfactual passage:
               reset.judging.lexical.check_answer); None where the example names no gold answer.
no_copy        a grounded response that does not reproduce COPY_LIMIT (half) or more of its passage
               (a copied passage is perfectly "faithful" and a fair summary by ROUGE); None without
               a context.

The judge step records them on each judgment (details["gates"]); selection drops a candidate
whose required gate is False, so a copied sentence or a memory answer can never win a prompt on
faithfulness alone (K-Precision gives both 1.0).
"""

from __future__ import annotations

from reset import ifeval
from reset.data.records import Example
from reset.judging.lexical import COPY_LIMIT, check_answer

GATES = ("if_pass", "answer_correct", "no_copy")


def gate_flags(example: Example, text: str) -> dict[str, bool | None]:
    if_pass = all(ifeval.check(c, text, prompt=example.instruction) for c in example.constraints) \
        if example.constraints else None
    check = check_answer(example, text)
    no_copy = None if check.copy is None else check.copy < COPY_LIMIT
    return {"if_pass": if_pass, "answer_correct": check.correct, "no_copy": no_copy}
