"""The comparison table of evaluated models (Markdown)."""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = [
    ("if_prompt_acc", "IF prompt acc"),
    ("if_instruction_acc", "IF instr acc"),
    ("faithfulness", "Faithfulness"),
    ("faithfulness_extractive", "Faith (extr)"),
    ("faithfulness_abstractive", "Faith (abstr)"),
    ("task", "Task"),
    ("combined", "Combined"),
]


def comparison_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per model, one column per metric, best value in bold."""
    if not results:
        return "(no evaluation results)"
    head = "| Model | " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    best = {k: max(m.get(k, 0.0) for m in results.values()) for k, _ in COLUMNS}
    lines = [head, sep]
    for name, m in results.items():
        cells = []
        for k, _ in COLUMNS:
            v = m.get(k, 0.0)
            cells.append(f"**{v:.3f}**" if len(results) > 1 and v == best[k] else f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
