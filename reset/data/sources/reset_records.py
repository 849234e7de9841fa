"""The project's own record schema (`reset.data.records.Example`), one JSON object per row:
id, source, kind, instruction, response, context, task, constraints, meta. A missing `id` is
derived from the content, a missing `source` is the data source's name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from reset.data.records import Example
from reset.data.sources.base import Converted, Ctx, stable_id

NAME = "reset"
LABEL = "Example"  # rejection reasons read "Example: ...", as they always have
SLOT = "any"
KNOWN = frozenset(f.name for f in fields(Example))
REQUIRED = ("kind", "instruction", "response")


def matches(row: dict[str, Any]) -> bool:
    return "kind" in row and "instruction" in row and "response" in row


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    data = dict(row)
    if not data.get("source"):
        data["source"] = ctx.source
    if not data.get("id"):
        data["id"] = stable_id(data["source"] if isinstance(data["source"], str) else ctx.source,
                               *(str(data.get(k) or "") for k in ("instruction", "context", "response")))
    return [Converted(Example(**data), None)]
