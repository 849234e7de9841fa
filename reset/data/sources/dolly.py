"""Dolly-15K (databricks-dolly-15k.jsonl): {instruction, context, response, category}.

Rows with a context are instruction-following examples that carry a context: the paper removes
them from the IF side. Three categories are context-dependent tasks by construction and can be
moved to the grounded side instead (data source `with_context: move`): closed_qa and
information_extraction (extractive), summarization (abstractive). A context in any other category
(open_qa, general_qa, brainstorming, classification, creative_writing) is only ever removed.
Dolly has no ids: each is a hash of the content."""

from __future__ import annotations

from typing import Any

from reset.data.sources.base import Converted, Ctx, example, stable_id, text

NAME = "dolly"
LABEL = "dolly"
SLOT = "instruction"
KNOWN = frozenset({"instruction", "context", "response", "category"})
CD_TASKS = {"closed_qa": "extractive", "information_extraction": "extractive", "summarization": "abstractive"}


def matches(row: dict[str, Any]) -> bool:
    return "instruction" in row and "response" in row and ("category" in row or "context" in row)


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    instruction, response = text(row, "instruction"), text(row, "response")
    context = text(row, "context", required=False)
    category = text(row, "category", required=False)
    ex = example(ctx, id=stable_id(ctx.source, instruction, context, response), instruction=instruction,
                 response=response, context=context, meta={"category": category} if category else {})
    return [Converted(ex, CD_TASKS.get(category))]
