"""CNN/DailyMail: {id, article, highlights} (the Hugging Face copy's columns), as CSV, JSONL or
Parquet. Each row becomes an abstractive, context-dependent example: the article is the context,
the highlights (one per line in the data) joined into one paragraph are the reference summary,
and the instruction is the data source's `instruction` (default below). Long articles are kept
(up to data.max_field_chars) and counted in the data card where they exceed the model's limits."""

from __future__ import annotations

from typing import Any

from reset.data.sources.base import Converted, Ctx, example, row_id, text

NAME = "cnn-dailymail"
LABEL = "cnn-dailymail"
SLOT = "grounded"
KNOWN = frozenset({"id", "article", "highlights"})
DEFAULT_INSTRUCTION = "Summarize the article in three sentences."


def matches(row: dict[str, Any]) -> bool:
    return "article" in row and "highlights" in row


def join_highlights(highlights: str) -> str:
    parts = [p.strip() for p in highlights.replace("\r", "\n").split("\n") if p.strip()]
    return " ".join(p if p[-1] in ".!?\"'" else p + "." for p in parts)


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    article, highlights = text(row, "article"), text(row, "highlights")
    if not article.strip():
        raise ValueError("field 'article': empty")
    summary = join_highlights(highlights)
    if not summary:
        raise ValueError("field 'highlights': empty")
    instruction = ctx.instruction or DEFAULT_INSTRUCTION
    ex = example(ctx, id=row_id(row, "id", ctx.source, article, summary), instruction=instruction,
                 response=summary, context=article, task=ctx.task or "abstractive")
    return [Converted(ex, "abstractive")]
