"""ReSet rounds: every round's model scored on the dev split, the best by dev is the ReSet model.

    best, scores = best_round({1: metrics_r1, 2: metrics_r2})   # point metrics on dev, per round

The dev score of a round is the mean of the primary axes (PRIMARY: IF prompt accuracy and gated
faithfulness) that the dev split measures; ties go to the earlier round (fewer rounds of training
on the model's own answers). Only dev is looked at: the test split stays for the final evaluation
and the gate (docs/design.md, "Splits").
"""

from __future__ import annotations

from collections.abc import Mapping

from reset.evaluation.metrics import PRIMARY


def dev_score(metrics: Mapping[str, float]) -> float:
    """The mean of the primary axes a round's dev metrics hold (0 when they hold none)."""
    vals = [float(metrics[k]) for k in PRIMARY if k in metrics]
    return sum(vals) / len(vals) if vals else 0.0


def best_round(metrics: Mapping[int, Mapping[str, float]]) -> tuple[int, dict[int, float]]:
    """(the best round, each round's dev score)."""
    if not metrics:
        raise ValueError("no rounds to pick from")
    scores = {k: dev_score(m) for k, m in sorted(metrics.items())}
    best = min(scores, key=lambda k: (-scores[k], k))
    return best, scores


def rounds_table(metrics: Mapping[int, Mapping[str, float]], best: int) -> str:
    """The rounds on dev, as Markdown: each primary axis, the dev score, which one is the ReSet model."""
    head = "| round | " + " | ".join(PRIMARY) + " | dev score | |\n|---|" + "---|" * (len(PRIMARY) + 2)
    rows = [f"| {k} | " + " | ".join(f"{m[a]:.3f}" if a in m else "n/a" for a in PRIMARY)
            + f" | {dev_score(m):.3f} | {'the ReSet model' if k == best else ''} |" for k, m in sorted(metrics.items())]
    return "\n".join([head, *rows])
