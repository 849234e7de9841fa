"""What every format module shares: the conversion context, the two ways a row is not kept
(invalid: `ValueError`; excluded by a rule of the recipe: `Excluded`), field access that names
the field, and stable ids.

A format module defines:

    NAME    the name used in config (`format: dolly`)
    SLOT    where its rows belong by nature: "instruction", "grounded" or "any"
    KNOWN   the fields it reads or deliberately ignores (any other field is "unknown": kept under
            meta["extra_fields"], ignored or rejected, as data.unknown_fields says)
    matches(row) -> bool              whether a row looks like this format (for detection)
    convert(row, ctx) -> [Converted]  the examples of one row
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from reset.data.records import Example


class Excluded(Exception):  # noqa: N818 - not an error: a row the recipe leaves out, with the reason
    """A valid row that the recipe leaves out (kept in the quarantine, not counted as bad)."""


class Converted(NamedTuple):
    """One example made from a row. `cd_task` is the context-dependent task ("extractive" /
    "abstractive") an instruction example with a context would be if moved to the grounded side
    (data source `with_context: move`); None when the format cannot tell."""

    example: Example
    cd_task: str | None = None


@dataclass
class Ctx:
    """Where a row comes from and the source's options, passed to `convert`."""

    source: str
    file: str = ""
    line: int = 0
    instruction: str = ""        # DataSource.instruction (formats without one: CNN/DailyMail)
    turns: str = "first"          # DataSource.turns (ShareGPT)
    task: str = ""                # DataSource.task
    fields: Mapping[str, str] = field(default_factory=dict)  # DataSource.fields (mapped)
    notes: dict[str, int] = field(default_factory=dict)      # counted events, e.g. skipped turns

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n


def text(row: Mapping[str, Any], key: str, *, required: bool = True, default: str = "") -> str:
    """A string field; a missing or non-string value is an error naming the field."""
    value = row.get(key)
    if type(value) is str:
        return value
    if value is None:
        if required:
            raise ValueError(f"missing field {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"field {key!r}: expected text, got {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def dig(row: Any, path: str) -> Any:
    """A value by a dotted path (`answers.text.0`): dict keys and list indices; KeyError naming
    the part that is missing."""
    cur = row
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(path if part == path else f"{path} (no {part!r})")
    return cur


def stable_id(source: str, *parts: str | None) -> str:
    """An id from the content, the same on every read of the same data: `<source>-<16 hex>`."""
    data = "\x1f".join(p or "" for p in parts).encode("utf-8", "surrogatepass")
    return f"{source}-{hashlib.sha256(data).hexdigest()[:16]}"


def row_id(row: Mapping[str, Any], key: str, source: str, *parts: str | None) -> str:
    """The row's own id where it has one (`key`), else a stable content hash."""
    value = row.get(key)
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    return stable_id(source, *parts)


def example(ctx: Ctx, *, id: str, instruction: str, response: str, context: str | None = None,  # noqa: A002
            kind: str = "", task: str = "", meta: dict[str, Any] | None = None) -> Example:
    """An Example with the source name filled in; `kind` defaults to grounded when `task` names a
    context-dependent task, else instruction."""
    context = context if context and context.strip() else None
    if not kind:
        kind = "grounded" if task in ("extractive", "abstractive") and context else "instruction"
    return Example(id=id, source=ctx.source, kind=kind, instruction=instruction.strip(), response=response.strip(),
                   context=context.strip() if context else None,
                   task=task if kind == "grounded" else "open", meta=meta or {})
