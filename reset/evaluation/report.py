"""The comparison in Markdown: a table of every arm with 95% intervals, the paired comparison with
the reference arm, the verdict lines and the selection's keep rates (for the console, the
report file and Kubeflow's Markdown visualization).

    markdown_report(summary, keep_rates=None, title=...) -> str    the whole report
    interval_table(summary, keys=None) -> str                       arms x metrics, "0.46 [0.33, 0.60]"
    paired_table(summary, keys=None) -> str                         arms vs the reference, "+0.06 [...] (p=...)"
    keep_rate_table(keep_rates) -> str                              kept / prompts with Wilson intervals
    keep_rate_rows(keep_rates) -> list[KeepRate]                    the same as records (the HTML uses them)
    comparison_table(results) -> str                                point values only (no intervals)

`keep_rates` is the selection step's report (reset.selection: "per_group" and "per_task", each
{group: {"prompts", "kept", "keep_rate"}}, and "per_family" when the selection counts constraint
families), or a dict of such reports by arm ({"reset": report, "reset-s": report}).

A metric marked with a dagger shares its measure with a judge that selected the training data
(Summary.selection); the footnote names the judges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reset.evaluation.statistics import Estimate, format_p, wilson_interval
from reset.evaluation.summary import AXIS_NAMES, FamilyRow, Summary, holm_family, verdicts

# The columns of the main tables (those with data are shown).
TABLE_KEYS = (
    "if_prompt_acc", "if_instruction_acc", "faithfulness", "answer_correct", "counterfactual_rate", "answer_f1",
    "rouge_l_abstractive", "k_precision_extractive", "k_precision_abstractive",
)
KEEP_SECTIONS = (("per_group", "source / kind"), ("per_task", "task"), ("per_family", "constraint family"))
DAGGER = "\u2020"

# point-value table (kept for callers that only have point metrics, e.g. a finished run's MLflow metrics)
COLUMNS = [
    ("if_prompt_acc", "IF prompt acc"),
    ("if_instruction_acc", "IF instr acc"),
    ("faithfulness", "Faithfulness"),
    ("faithfulness_extractive", "Faith (extr)"),
    ("faithfulness_abstractive", "Faith (abstr)"),
    ("answer_correct", "Answer correct"),
    ("counterfactual_rate", "Counterfactual"),
    ("task", "Task"),
]


def comparison_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Point values only: one row per model, one column per metric (of COLUMNS), best in bold.
    A figure without its interval is not a result: prefer markdown_report(summarize(...))."""
    if not results:
        return "(no evaluation results)"
    head = "| Model | " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    best = {k: max((m[k] for m in results.values() if k in m), default=None) for k, _ in COLUMNS}
    lines = [head, sep]
    for name, m in results.items():
        cells = []
        for k, _ in COLUMNS:
            if k not in m:
                cells.append("n/a")
                continue
            v = m[k]
            cells.append(f"**{v:.3f}**" if len(results) > 1 and v == best[k] else f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_keys(summary: Summary, keys: Sequence[str] | None = None) -> list[str]:
    """The requested (default TABLE_KEYS) metrics that some arm has data for."""
    have = {m.key for m in summary.metrics}
    return [k for k in (keys or TABLE_KEYS)
            if k in have and any(summary.estimates[a][k].n > 0 for a in summary.arms)]


def header(summary: Summary, key: str) -> str:
    m = summary.metric(key)
    return m.label + (DAGGER if key in summary.selection else "")


def _n(summary: Summary, key: str) -> str:
    ns = sorted({summary.estimates[a][key].n for a in summary.arms})
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def interval_table(summary: Summary, keys: Sequence[str] | None = None) -> str:
    """Markdown: one row per arm, each cell the value and its 95% interval; the last row gives n."""
    cols = table_keys(summary, keys)
    lines = ["| Model | " + " | ".join(header(summary, k) for k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for a in summary.arms:
        lines.append(f"| {summary.label(a)} | " + " | ".join(summary.estimates[a][k].format() for k in cols) + " |")
    lines.append("| *n* | " + " | ".join(_n(summary, k) for k in cols) + " |")
    return "\n".join(lines)


def paired_table(summary: Summary, keys: Sequence[str] | None = None) -> str:
    """Markdown: one row per arm other than the reference, each cell the paired difference, its 95%
    interval and p (McNemar's score test and Tango's interval for rates, the paired t for means)."""
    if summary.reference is None or not summary.comparisons:
        return "(no reference arm to compare with)"
    cols = table_keys(summary, keys)
    ref = summary.label(summary.reference)
    lines = [f"| vs {ref} | " + " | ".join(header(summary, k) for k in cols) + " |", "|---|" + "---:|" * len(cols)]
    for a in summary.arms:
        if a in summary.comparisons:
            cells = [summary.comparisons[a][k].format() for k in cols]
            lines.append(f"| {summary.label(a)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def footnotes(summary: Summary, keys: Sequence[str] | None = None) -> list[str]:
    pct = f"{summary.confidence:.0%}"
    notes = [f"Intervals: {pct}; Wilson for rates, percentile bootstrap for means. Paired differences: rates by "
             "McNemar's score test with Tango's interval, means by the paired t-test with its t interval (one "
             "statistic each: an interval that excludes 0 goes with p < 0.05); units paired by example id."]
    by_judges: dict[tuple[str, ...], list[str]] = {}
    for k in table_keys(summary, keys):
        if k in summary.selection:
            by_judges.setdefault(summary.selection[k], []).append(summary.metric(k).label)
    for judges, labels in by_judges.items():
        notes.append(f"{DAGGER} shares its measure with the selection judge(s) {', '.join(judges)}: "
                     f"{', '.join(labels)}.")
    return notes


def holm_table(rows: Sequence[FamilyRow], reference: str = "MTL", labels: Summary | None = None) -> str:
    """Markdown: each comparison of the family with its difference, interval, raw and Holm p."""
    if not rows:
        return "(no other comparisons)"
    name = labels.label if labels is not None else (lambda a: a)
    lines = ["| Comparison | Axis | Difference [95%] | p | Holm p |", "|---|---|---:|---:|---:|"]
    for r in rows:
        who = r.arm if " vs " in r.arm else f"{name(r.arm)} vs {reference}"
        lines.append(f"| {who} | {AXIS_NAMES.get(r.axis, r.axis)} | {r.test.format(3).rsplit(' (', 1)[0]} | "
                     f"{format_p(r.test.p_value)} | {format_p(r.p_holm)} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class KeepRate:
    """One line of the keep rates: `arm` is "" for a single selection report."""

    arm: str
    section: str
    group: str
    kept: int
    prompts: int

    @property
    def estimate(self) -> Estimate:
        low, high = wilson_interval(self.kept, self.prompts)
        return Estimate(self.kept / self.prompts if self.prompts else float("nan"), low, high, self.prompts, "wilson")


def keep_rate_rows(keep_rates: Mapping[str, Any] | None) -> list[KeepRate]:
    """Flatten a selection report (or reports by arm) into KeepRate records."""
    if not keep_rates:
        return []
    reports = {"": keep_rates} if any(s in keep_rates for s, _ in KEEP_SECTIONS) else dict(keep_rates)
    out = []
    for arm, rep in reports.items():
        if not isinstance(rep, Mapping):
            raise ValueError(f"keep rates of {arm!r}: expected a selection report (a dict), got {type(rep).__name__}")
        for section, title in KEEP_SECTIONS:
            for group, g in (rep.get(section) or {}).items():
                out.append(KeepRate(arm, title, str(group), int(g["kept"]), int(g["prompts"])))
    return out


def keep_rate_table(keep_rates: Mapping[str, Any] | None) -> str:
    rows = keep_rate_rows(keep_rates)
    if not rows:
        return "(no keep rates)"
    with_arm = any(r.arm for r in rows)
    head = ("| Selection " if with_arm else "") + "| By | Group | Kept | Keep rate [95%] |"
    lines = [head, ("|---" if with_arm else "") + "|---|---|---:|---:|"]
    for r in rows:
        lead = f"| {r.arm} " if with_arm else ""
        lines.append(f"{lead}| {r.section} | {r.group} | {r.kept}/{r.prompts} | {r.estimate.format()} |")
    return "\n".join(lines)


def markdown_report(summary: Summary, *, keep_rates: Mapping[str, Any] | None = None,
                    title: str = "ReSet: held-out comparison", keys: Sequence[str] | None = None,
                    extra: Sequence[str] = (), primary: Sequence[str] = ("reset",)) -> str:
    """The report in Markdown (KFP's Markdown visualization renders it): verdicts, the interval
    table, the paired table, notes and keep rates."""
    parts = [f"# {title}", ""]
    lines = verdicts(summary) if summary.reference is not None else []
    if lines:
        parts += ["**Verdict** (difference to the reference, 95% interval, two-sided p):", ""]
        parts += [f"- {v}" for v in lines] + [""]
    parts += ["## Held-out figures", "", interval_table(summary, keys), ""]
    if summary.comparisons:
        parts += [f"## Paired against {summary.label(summary.reference or '')}", "", paired_table(summary, keys), ""]
    parts += [f"- {n}" for n in footnotes(summary, keys)] + [f"- {e}" for e in extra] + [""]
    family = holm_family(summary, primary=primary)
    if family:
        parts += ["## Other comparisons (Holm-adjusted over the family)", "",
                  f"The primary hypothesis ({', '.join(summary.label(a) for a in primary)} against "
                  f"{summary.label(summary.reference or '')}) is the gate's; every other arm and axis is one "
                  "family, its p-values Holm-adjusted.", "",
                  holm_table(family, summary.label(summary.reference or ""), summary), ""]
    families = [m.key for m in summary.metrics if m.key.startswith("if_family.")]
    if families:
        parts += ["## Instruction following per constraint family", "", interval_table(summary, families), ""]
    if keep_rates:
        parts += ["## Selection keep rates", "", keep_rate_table(keep_rates), ""]
    return "\n".join(parts)


HEADLINE = ("if_prompt_acc", "faithfulness")
HEADLINE_TABLE = ("if_prompt_acc", "faithfulness", "answer_correct", "counterfactual_rate", "answer_f1",
                  "rouge_l_abstractive")


def headline_text(summary: Summary, lines: list[str]) -> str:
    """What the CLI prints at the end of a run: the main figures with intervals, the verdicts."""
    return interval_table(summary, HEADLINE_TABLE) + "\n\n" + "\n".join(lines)
