"""Reject sampling: keep the best judged candidate per prompt.

ReSet:   per prompt, the candidate with the highest combined score, if it reaches `threshold`.
ReSet-S: per prompt, the best candidate if it reaches `strict_threshold`; of those, only the top
         `top_fraction` by score ("less is more": the paper's set was about 3x smaller, and better).
Ties break towards the earlier candidate id, so a selection is reproducible.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.config import SelectConfig
from reset.data.records import Candidate, Example, Judgment, check_references


class SelectionError(RuntimeError):
    """Too few examples survived selection to continue fine-tuning."""


@dataclass
class Selection:
    examples: list[Example]
    report: dict[str, Any] = field(default_factory=dict)


def select(
    examples: Sequence[Example],
    candidates: Sequence[Candidate],
    judgments: Sequence[Judgment],
    cfg: SelectConfig,
) -> Selection:
    check_references(examples, candidates, judgments)
    by_ex = {e.id: e for e in examples}
    by_cand = {c.id: c for c in candidates}
    groups: dict[str, list[Judgment]] = defaultdict(list)
    for j in judgments:
        groups[j.example_id].append(j)

    threshold = cfg.strict_threshold if cfg.mode == "reset-s" else cfg.threshold
    best: list[Judgment] = []
    for ex_id in sorted(groups):
        top = min(groups[ex_id], key=lambda j: (-j.combined, j.candidate_id))
        if top.combined >= threshold:
            best.append(top)
    if cfg.mode == "reset-s" and best:
        best.sort(key=lambda j: (-j.combined, j.candidate_id))
        best = best[: max(1, math.ceil(len(best) * cfg.top_fraction))]

    chosen = []
    for j in sorted(best, key=lambda j: j.example_id):
        ex, cand = by_ex[j.example_id], by_cand[j.candidate_id]
        chosen.append(
            Example(
                id=f"{ex.id}@reset",
                source=ex.source,
                kind=ex.kind,
                instruction=ex.instruction,
                response=cand.text,
                context=ex.context,
                task=ex.task,
                constraints=ex.constraints,
                meta={
                    "origin": "reset",
                    "candidate_id": cand.id,
                    "combined": j.combined,
                    "scores": j.scores,
                    "decoding": cand.decoding,
                },
            )
        )
    report = _report(by_ex, groups, best, cfg, threshold)
    if len(chosen) < cfg.min_selected:
        raise SelectionError(
            f"select: {len(chosen)} examples selected (mode {cfg.mode}, threshold {threshold:g}) but "
            f"select.min_selected is {cfg.min_selected}; best combined score was {report['best_score']:.3f}. "
            "Lower the threshold or generate more samples."
        )
    return Selection(chosen, report)


def _report(by_ex, groups, best, cfg: SelectConfig, threshold: float) -> dict[str, Any]:
    def rates(key) -> dict[str, dict[str, float]]:
        prompts = Counter(key(by_ex[ex_id]) for ex_id in groups)
        kept = Counter(key(by_ex[j.example_id]) for j in best)
        return {g: {"prompts": n, "kept": kept[g], "keep_rate": kept[g] / n} for g, n in sorted(prompts.items())}

    all_best = [max(g, key=lambda j: j.combined).combined for g in groups.values()]
    strategies = Counter(str(j.details.get("decoding", {}).get("strategy", "?")) for j in best)
    return {
        "mode": cfg.mode,
        "threshold": threshold,
        "prompts": len(groups),
        "candidates": sum(len(g) for g in groups.values()),
        "selected": len(best),
        "keep_rate": len(best) / len(groups) if groups else 0.0,
        "mean_selected_score": sum(j.combined for j in best) / len(best) if best else 0.0,
        "best_score": max(all_best) if all_best else 0.0,
        # keep rate per source and kind (instruction / grounded), and per task (open / extractive / abstractive)
        "per_group": rates(lambda ex: f"{ex.source}/{ex.kind}"),
        "per_task": rates(lambda ex: ex.task),
        "selected_by_strategy": dict(strategies),
    }
