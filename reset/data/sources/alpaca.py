"""Alpaca (alpaca_data.json, a JSON array; also JSONL): {instruction, input, output}.

A non-empty `input` is the example's context (the paper removes IF examples that carry one);
an empty input, or the "<noinput>" placeholder, is no context. A `text` column (the rendered
prompt some copies carry) is read and ignored. Ids are hashes of the content."""

from __future__ import annotations

from typing import Any

from reset.data.sources.base import Converted, Ctx, example, stable_id, text

NAME = "alpaca"
LABEL = "alpaca"
SLOT = "instruction"
KNOWN = frozenset({"instruction", "input", "output", "text"})
NO_INPUT = {"", "<noinput>", "<no input>", "noinput"}


def matches(row: dict[str, Any]) -> bool:
    return "instruction" in row and "output" in row


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    instruction, response = text(row, "instruction"), text(row, "output")
    context = text(row, "input", required=False)
    if context.strip().lower() in NO_INPUT:
        context = ""
    ex = example(ctx, id=stable_id(ctx.source, instruction, context, response), instruction=instruction,
                 response=response, context=context)
    return [Converted(ex, None)]
