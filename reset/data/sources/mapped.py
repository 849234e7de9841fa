"""Any other JSON / JSONL / CSV / Parquet shape, through a field mapping in the data source:

    - path: s3://bucket/qa.parquet
      fields: {instruction: question, context: passage.text, response: answers.0, id: qid}
      task: extractive

Keys: instruction and response (required), context, id, answer (meta["answer"], the gold span a
judge may use). Values are column names or dotted paths into nested objects and lists
(`answers.0`, `meta.title`). With a context, `task` (extractive / abstractive) says which
context-dependent task the rows are."""

from __future__ import annotations

from typing import Any

from reset.data.sources.base import Converted, Ctx, dig, example, row_id, stable_id

NAME = "mapped"
LABEL = "mapped"
SLOT = "any"
KNOWN: frozenset[str] = frozenset()  # the mapping's own columns, see known()
KEYS = ("instruction", "response", "context", "id", "answer")


def known(fields: dict[str, str]) -> frozenset[str]:
    return frozenset(path.split(".", 1)[0] for path in fields.values())


def matches(row: dict[str, Any]) -> bool:
    return False  # never detected: named by `fields:`


def _get(row: dict[str, Any], fields: dict[str, str], key: str, required: bool) -> str:
    if key not in fields:
        return ""
    try:
        value = dig(row, fields[key])
    except KeyError as exc:
        if required:
            raise ValueError(f"field {exc.args[0]!r} (mapped to {key}) is missing") from None
        return ""
    if value is None:
        if required:
            raise ValueError(f"field {fields[key]!r} (mapped to {key}) is null")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"field {fields[key]!r} (mapped to {key}): expected text, got {type(value).__name__}")
    return str(value)


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    f = dict(ctx.fields)
    instruction = _get(row, f, "instruction", True)
    response = _get(row, f, "response", True)
    context = _get(row, f, "context", False)
    answer = _get(row, f, "answer", False)
    ex_id = _get(row, f, "id", False) or stable_id(ctx.source, instruction, context, response)
    task = ctx.task if ctx.task in ("extractive", "abstractive") else ""
    ex = example(ctx, id=row_id({"id": ex_id}, "id", ctx.source), instruction=instruction, response=response,
                 context=context, task=task, meta={"answer": answer} if answer else {})
    return [Converted(ex, task or None)]
