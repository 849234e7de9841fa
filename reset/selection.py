"""Reject sampling: keep the best judged candidate per prompt.

ReSet:   per prompt, the candidate with the highest combined score, if it reaches `threshold`.
ReSet-S: per prompt, the best candidate if it reaches `strict_threshold`; of those, only the top
         `top_fraction` by score within each kind ("less is more": the paper's set was about 3x
         smaller, and better). Per kind, because an IF answer's combined score (instruction + task)
         and a grounded answer's (faithfulness + task) are not on one scale: one ranking over both
         kept only grounded answers in the demo's experiment. With `stratify: family` the ranking
         runs within each kind's strata (an IF prompt's first constraint family, a grounded
         prompt's task): a family the model finds hard scores lower on the whole, so a top share
         per kind keeps the easy families' prompts and drops the hard ones (stratum()).
Ties break towards the earlier candidate id, so a selection is reproducible.

Gates come first: a candidate whose required gate failed (details["gates"], written by the judge
step from reset.judging.gates: an IF answer that breaks an instruction, an extractive answer that
is not correct against its passage) cannot be selected, whatever its score. The report gives keep
rates per source / kind, per task, per constraint family and per gate, and `ranks` (every
judgment's rank within its prompt and whether it was selected) for the judged-samples table.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.config import GenerateConfig, SelectConfig
from reset.data.records import Candidate, Example, Judgment, check_references


def sampled_by(candidates: Sequence[Candidate], cfg: GenerateConfig) -> list[Candidate]:
    """The candidates a generation with `cfg` would have sampled: those whose decoding setting is
    in its grid, at most its samples per setting (greedy: one), the reference when it includes
    it. Lets arms that sample from the same model share one larger generation (the experiment's
    ReSet and ReSet-S: ReSet's candidates are a subset of ReSet-S's)."""
    want = {(float(d.temperature), float(d.top_p) if d.temperature else 1.0) for d in cfg.grid}
    out = []
    for c in candidates:
        d = c.decoding
        if d.get("strategy") == "reference":
            if cfg.include_reference:
                out.append(c)
            continue
        temp = float(d.get("temperature", 0.0))
        key = (temp, float(d.get("top_p", 1.0)) if temp else 1.0)
        limit = 1 if temp == 0 else cfg.samples_per_setting
        if key in want and int(d.get("sample", 0)) < limit:
            out.append(c)
    return out


class SelectionError(RuntimeError):
    """Too few examples survived selection to continue fine-tuning."""


@dataclass
class Selection:
    examples: list[Example]
    report: dict[str, Any] = field(default_factory=dict)


def round_threshold(cfg: SelectConfig, round_: int = 1) -> float:
    """The threshold of ReSet round `round_` (1-based): the mode's threshold, raised by
    `select.threshold_step` each round after the first (ReST-EM's rising bar), at most 1."""
    base = cfg.strict_threshold if cfg.mode == "reset-s" else cfg.threshold
    return min(1.0, base + (round_ - 1) * cfg.threshold_step)


def required_gates(cfg: SelectConfig) -> list[str]:
    return [g for g, on in (("if_pass", cfg.gate_if_pass), ("answer_correct", cfg.gate_answer_correct),
                            ("no_copy", cfg.gate_no_copy)) if on]


def failed_gates(j: Judgment, required: Sequence[str]) -> list[str]:
    return [g for g in required if j.details.get("gates", {}).get(g) is False]


def select(
    examples: Sequence[Example],
    candidates: Sequence[Candidate],
    judgments: Sequence[Judgment],
    cfg: SelectConfig,
    round_: int = 1,
) -> Selection:
    """The selection of ReSet round `round_` (its threshold: round_threshold)."""
    check_references(examples, candidates, judgments)
    by_ex = {e.id: e for e in examples}
    by_cand = {c.id: c for c in candidates}
    groups: dict[str, list[Judgment]] = defaultdict(list)
    for j in judgments:
        groups[j.example_id].append(j)

    threshold = round_threshold(cfg, round_)
    required = required_gates(cfg)
    gated: Counter[str] = Counter()
    best: list[Judgment] = []
    for ex_id in sorted(groups):
        eligible = []
        for j in groups[ex_id]:
            failed = failed_gates(j, required)
            gated.update(failed)
            if not failed:
                eligible.append(j)
        if not eligible:
            continue
        top = min(eligible, key=lambda j: (-j.combined, j.candidate_id))
        if top.combined >= threshold:
            best.append(top)
    if cfg.mode == "reset-s" and best:
        by_kind: dict[str, list[Judgment]] = defaultdict(list)
        for j in best:
            ex = by_ex[j.example_id]
            by_kind[stratum(ex) if cfg.stratify == "family" else ex.kind].append(j)
        best = []
        for _, js in sorted(by_kind.items()):
            js.sort(key=lambda j: (-j.combined, j.candidate_id))
            best += js[: max(1, math.ceil(len(js) * cfg.top_fraction))]

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
    report["round"] = round_
    report["gated_out"] = {g: gated[g] for g in required}
    report["ranks"] = _ranks(groups, best)
    if len(chosen) < cfg.min_selected:
        raise SelectionError(
            f"select: {len(chosen)} examples selected (mode {cfg.mode}, threshold {threshold:g}) but "
            f"select.min_selected is {cfg.min_selected}; best combined score was {report['best_score']:.3f}. "
            "Lower the threshold or generate more samples."
        )
    return Selection(chosen, report)


def stratum(ex: Example) -> str:
    """ReSet-S's ranking group under `stratify: family`: kind, then an IF prompt's first constraint
    family (the IFEval id before ":") or a grounded prompt's task."""
    if ex.kind == "grounded" or not ex.constraints:
        return f"{ex.kind}/{ex.task}"
    return f"{ex.kind}/{ex.constraints[0]['id'].split(':')[0]}"


def preference_pairs(
    examples: Sequence[Example],
    candidates: Sequence[Candidate],
    judgments: Sequence[Judgment],
    cfg: SelectConfig,
    selection: Selection,
    prompt: Callable[[Example], list[dict[str, str]]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The judged candidates as preference pairs in TRL's conversational preference format (rows
    of `prompt`, `chosen`, `rejected` message lists; trl.data_utils reads them): per selected
    prompt, chosen = the selected answer, rejected = the lowest-scoring other answer to the same
    prompt that failed a gate or the round's threshold (a prompt without one gives no pair); each
    row also carries both combined scores, the margin, why the rejected answer was rejected and the
    ids. `prompt(example)` makes the prompt's chat messages (reset.models.chat.messages). Returns
    (rows, counts)."""
    by_ex = {e.id: e for e in examples}
    by_cand = {c.id: c for c in candidates}
    scored = {j.candidate_id: j for j in judgments}
    threshold = float(selection.report.get("threshold", round_threshold(cfg)))
    required = required_gates(cfg)
    groups: dict[str, list[Judgment]] = defaultdict(list)
    for j in judgments:
        groups[j.example_id].append(j)
    rows: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    for chosen in selection.examples:
        cand = by_cand[str(chosen.meta["candidate_id"])]
        won = scored[cand.id]
        losers = []
        for j in groups[cand.example_id]:
            other = by_cand[j.candidate_id]
            if j.candidate_id == cand.id or other.is_reference or other.text.strip() == cand.text.strip():
                continue
            why = [f"gate {g}" for g in failed_gates(j, required)]
            if j.combined < threshold:
                why.append(f"score below the threshold {threshold:g}")
            if why:
                losers.append((j, why))
        if not losers:
            continue
        lost, why = min(losers, key=lambda jw: (jw[0].combined, jw[0].candidate_id))
        reasons.update(w.split(" below")[0] if w.startswith("score") else w for w in why)
        ex = by_ex[cand.example_id]
        rows.append({
            "prompt": prompt(ex),
            "chosen": [{"role": "assistant", "content": cand.text}],
            "rejected": [{"role": "assistant", "content": by_cand[lost.candidate_id].text}],
            "chosen_score": won.combined,
            "rejected_score": lost.combined,
            "margin": won.combined - lost.combined,
            "rejected_because": "; ".join(why),
            "example_id": ex.id, "chosen_id": cand.id, "rejected_id": lost.candidate_id,
            "kind": ex.kind, "task": ex.task, "source": ex.source,
        })
    margins = [r["margin"] for r in rows]
    counts = {"pairs": len(rows), "selected_prompts": len(selection.examples),
              "without_rejected": len(selection.examples) - len(rows),
              "mean_margin": sum(margins) / len(margins) if margins else 0.0,
              "rejected_because": dict(sorted(reasons.items())),
              "by_kind": dict(sorted(Counter(r["kind"] for r in rows).items()))}
    return rows, counts


def _ranks(groups: dict[str, list[Judgment]], best: list[Judgment]) -> dict[str, dict[str, Any]]:
    """candidate id -> {"rank": 1-based rank within its prompt by combined score, "selected": bool}."""
    chosen = {j.candidate_id for j in best}
    out = {}
    for js in groups.values():
        for r, j in enumerate(sorted(js, key=lambda j: (-j.combined, j.candidate_id)), start=1):
            out[j.candidate_id] = {"rank": r, "selected": j.candidate_id in chosen}
    return out


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
        # keep rate per constraint family (the IFEval id before ":"), over prompts carrying it
        "per_family": _family_rates(by_ex, groups, best),
        "selected_by_strategy": dict(strategies),
    }


def _family_rates(by_ex, groups, best) -> dict[str, dict[str, float]]:
    kept = {j.example_id for j in best}
    prompts: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for ex_id in groups:
        for fam in sorted({c["id"].split(":")[0] for c in by_ex[ex_id].constraints}):
            prompts[fam] += 1
            hits[fam] += ex_id in kept
    return {f: {"prompts": n, "kept": hits[f], "keep_rate": hits[f] / n} for f, n in sorted(prompts.items())}


def by_kind(rep: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Kept and prompts per kind, from a report's per-group counts ("<source>/<kind>")."""
    out: dict[str, dict[str, int]] = {}
    for group, g in rep["per_group"].items():
        kind = group.rsplit("/", 1)[-1]
        acc = out.setdefault(kind, {"kept": 0, "prompts": 0})
        acc["kept"] += g["kept"]
        acc["prompts"] += g["prompts"]
    return out


def judged_table(examples: Sequence[Example], cands: Sequence[Candidate], judgments: Sequence[Judgment],
                 ranks: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Every judged candidate with its scores, gates, rank within its prompt and whether it was selected."""
    by_ex, by_c = {e.id: e for e in examples}, {c.id: c for c in cands}
    rows = sorted(judgments, key=lambda j: (j.example_id, ranks.get(j.candidate_id, {}).get("rank", 0)))
    gates = sorted({g for j in rows for g in j.details.get("gates", {})})
    return {
        "example_id": [j.example_id for j in rows],
        "candidate_id": [j.candidate_id for j in rows],
        "kind": [by_ex[j.example_id].kind for j in rows],
        "task": [by_ex[j.example_id].task for j in rows],
        "instruction": [by_ex[j.example_id].instruction for j in rows],
        "response": [by_c[j.candidate_id].text for j in rows],
        "temperature": [by_c[j.candidate_id].decoding.get("temperature") for j in rows],
        **{f"score_{a}": [j.scores.get(a) for j in rows] for a in ("instruction", "faithfulness", "task")},
        **{f"gate_{g}": [j.details.get("gates", {}).get(g) for j in rows] for g in gates},
        "combined": [j.combined for j in rows],
        "rank": [ranks.get(j.candidate_id, {}).get("rank") for j in rows],
        "selected": [bool(ranks.get(j.candidate_id, {}).get("selected")) for j in rows],
    }
