"""One record schema for all data: examples, candidates and judgments, on disk as JSONL.

Every row is validated on read. A bad row is never dropped silently: `read_jsonl` returns it as a
`Rejected` (file, line, reason, raw text) and `write_quarantine` keeps it beside the output. A file
that cannot be read, holds no valid row, or has more bad rows than allowed raises `DataError`
naming the file and the first bad lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

from reset.errors import DataError

KINDS = ("instruction", "grounded")
TASKS = ("open", "extractive", "abstractive")


@dataclass
class Example:
    """A training / evaluation example.

    kind: "instruction" (instruction following, no context) or "grounded" (context-dependent).
    task: "open" (free-form IF), "extractive" (answer is a span of the context) or "abstractive"
    (e.g. a summary). constraints: verifiable instructions, IFEval style:
    [{"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 40}}].
    """

    id: str
    source: str
    kind: str
    instruction: str
    response: str
    context: str | None = None
    task: str = "open"
    constraints: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _require_text(self, ("id", "source", "instruction", "response"))
        if self.kind not in KINDS:
            raise ValueError(f"field 'kind': {self.kind!r} is not one of {list(KINDS)}")
        if self.task not in TASKS:
            raise ValueError(f"field 'task': {self.task!r} is not one of {list(TASKS)}")
        if self.kind == "grounded" and not (isinstance(self.context, str) and self.context.strip()):
            raise ValueError("field 'context': a grounded example needs a non-empty context")
        if self.context is not None and not isinstance(self.context, str):
            raise ValueError("field 'context': must be a string or null")
        if not isinstance(self.constraints, list):
            raise ValueError("field 'constraints': must be a list")
        for i, c in enumerate(self.constraints):
            if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                raise ValueError(f"field 'constraints[{i}]': must be an object with a string 'id'")
            if not isinstance(c.get("kwargs", {}), dict):
                raise ValueError(f"field 'constraints[{i}].kwargs': must be an object")
        if self.constraints:  # (most rows have none: skip the checker's import on the hot path)
            from reset.ifeval import validate_constraints

            try:
                validate_constraints(self.constraints)
            except ValueError as exc:  # unknown instruction id, missing or ill-typed kwarg
                raise ValueError(f"field 'constraints': {exc}") from None
        if not isinstance(self.meta, dict):
            raise ValueError("field 'meta': must be an object")

    @property
    def has_context(self) -> bool:
        return bool(self.context and self.context.strip())


@dataclass
class Candidate:
    """One generated response to an example, with the decoding settings that produced it."""

    id: str
    example_id: str
    text: str
    decoding: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    is_reference: bool = False

    def validate(self) -> None:
        _require_text(self, ("id", "example_id"))
        if not isinstance(self.text, str):
            raise ValueError("field 'text': must be a string")
        if not isinstance(self.decoding, dict):
            raise ValueError("field 'decoding': must be an object")


@dataclass
class Judgment:
    """Scores of one candidate. Each axis is in [0, 1] or None where it does not apply
    (faithfulness without a context, instruction following without constraints)."""

    candidate_id: str
    example_id: str
    scores: dict[str, float | None]
    combined: float
    rationale: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _require_text(self, ("candidate_id", "example_id"))
        if not isinstance(self.scores, dict):
            raise ValueError("field 'scores': must be an object")
        for k, v in self.scores.items():
            if v is not None and not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"field 'scores.{k}': {v!r} is not null or a number in [0, 1]")
        if not (isinstance(self.combined, int | float) and 0.0 <= self.combined <= 1.0):
            raise ValueError(f"field 'combined': {self.combined!r} is not a number in [0, 1]")


Record = Example | Candidate | Judgment
R = TypeVar("R", Example, Candidate, Judgment)


def _require_text(obj: Any, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, str) or not value or value.isspace():
            raise ValueError(f"field '{name}': must be a non-empty string")


@dataclass
class Rejected:
    """A row that was not kept, with where it came from and why. `category` groups the reasons
    for counting: invalid (counts towards data.max_bad_fraction), too-large (also counts),
    excluded (a rule of the recipe: an IF example with a context, a question without an answer),
    duplicate, near-duplicate. `source` is the data source's name."""

    file: str
    line: int
    reason: str
    raw: str
    category: str = "invalid"
    source: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


BAD_CATEGORIES = ("invalid", "too-large")  # the categories that count towards data.max_bad_fraction


def from_dict(cls: type[R], row: Any) -> R:
    """Build and validate one record; raises ValueError naming the field."""
    if not isinstance(row, dict):
        raise ValueError(f"row must be a JSON object, got {type(row).__name__}")
    names = {f.name for f in fields(cls)}
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in row]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    unknown = sorted(set(row) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected {sorted(names)}")
    rec = cls(**row)
    rec.validate()
    return rec


def read_jsonl(
    path: str | os.PathLike[str],
    cls: type[R],
    *,
    max_bad_fraction: float = 0.0,
) -> tuple[list[R], list[Rejected]]:
    """Read and validate a JSONL file of `cls` records.

    Returns (records, rejected). Raises DataError when the file is missing or unreadable, holds no
    valid record, or when the share of bad rows exceeds `max_bad_fraction` (0 = any bad row fails).
    """
    numbered, bad = read_jsonl_numbered(path, cls, max_bad_fraction=max_bad_fraction)
    return [rec for _, rec in numbered], bad


def read_jsonl_numbered(
    path: str | os.PathLike[str],
    cls: type[R],
    *,
    max_bad_fraction: float = 0.0,
) -> tuple[list[tuple[int, R]], list[Rejected]]:
    """As read_jsonl, with each record's 1-based file line: [(line, record)]."""
    from reset.data.reading import RowReader

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: cannot read: is a directory")

    good: list[tuple[int, R]] = []
    bad: list[Rejected] = []
    # Each line is decoded and parsed on its own (a BOM, CRLF, a bad byte, deep nesting or a NUL
    # cost that line only); a JSON array is read element by element.
    for raw in RowReader(path, path, "jsonl"):
        if raw.error:
            bad.append(Rejected(path, raw.line, raw.error, raw.raw(), raw.category))
            continue
        try:
            good.append((raw.line, from_dict(cls, raw.value)))
        except (TypeError, ValueError, RecursionError) as exc:
            bad.append(Rejected(path, raw.line, f"{cls.__name__}: {exc}", raw.raw()))

    total = len(good) + len(bad)
    if total == 0:
        raise DataError(f"{path}: empty dataset (no rows)")
    if not good:
        raise DataError(f"{path}: no valid {cls.__name__} rows; first problems: " + _first(bad))
    if bad and len(bad) / total > max_bad_fraction:
        raise DataError(
            f"{path}: {len(bad)} of {total} rows are invalid (allowed share {max_bad_fraction:g}): " + _first(bad)
        )
    return good, bad


def _first(bad: Sequence[Rejected], n: int = 3) -> str:
    shown = "; ".join(f"line {r.line}: {r.reason}" for r in bad[:n])
    return shown + (f"; and {len(bad) - n} more" if len(bad) > n else "")


def to_row(rec: Record | Rejected | dict[str, Any]) -> dict[str, Any]:
    """A record as the dict written to JSONL (an Example without the cost of a deep asdict)."""
    if isinstance(rec, dict):
        return rec
    if isinstance(rec, Example):
        return {"id": rec.id, "source": rec.source, "kind": rec.kind, "instruction": rec.instruction,
                "response": rec.response, "context": rec.context, "task": rec.task,
                "constraints": rec.constraints, "meta": rec.meta}
    return asdict(rec)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Record | Rejected | dict[str, Any]]) -> int:
    """Write records as JSONL (atomically: a temp file renamed into place). Returns the row count."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(to_row(rec), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_quarantine(path: str | os.PathLike[str], rejected: Sequence[Rejected]) -> int:
    """Keep rejected rows, with file, line and reason, in a JSONL file (written even when empty,
    so a reader can tell 'nothing was rejected' from 'nobody looked')."""
    return write_jsonl(path, [asdict(r) for r in rejected])


def read_quarantine(path: str | os.PathLike[str]) -> list[Rejected]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [Rejected(**json.loads(line)) for line in fh if line.strip()]


class QuarantineWriter:
    """Rejected rows written as they come (a run over millions of rows never holds them all), with
    counts per category and per source. Written atomically: the file appears when it is closed.
    `first` keeps the first `keep` rows in memory (all of them with keep=None)."""

    def __init__(self, path: str | os.PathLike[str] | None, keep: int | None = 200):
        self.path = os.fspath(path) if path else None
        self.keep = keep
        self.total = 0
        self.by_category: dict[str, int] = {}
        self.by_source: dict[str, dict[str, int]] = {}
        self.first: list[Rejected] = []
        self._fh = None
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._tmp = f"{self.path}.tmp-{os.getpid()}"
            self._fh = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def add(self, rej: Rejected) -> None:
        self.total += 1
        self.by_category[rej.category] = self.by_category.get(rej.category, 0) + 1
        per = self.by_source.setdefault(rej.source, {})
        per[rej.category] = per.get(rej.category, 0) + 1
        if self.keep is None or len(self.first) < self.keep:
            self.first.append(rej)
        if self._fh is not None:
            self._fh.write(json.dumps(asdict(rej), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            os.unlink(self._tmp)


Axis = Literal["instruction", "faithfulness", "task"]
AXES: tuple[Axis, ...] = ("instruction", "faithfulness", "task")


def check_references(examples: Sequence[Example], candidates: Sequence[Candidate],
                     judgments: Sequence[Judgment] = ()) -> None:
    """Every candidate names a known example; every judgment a known candidate, and the same
    example its candidate names. Raises ValueError with a count and the first ids."""
    ex_ids = {e.id for e in examples}
    by_cand = {c.id: c for c in candidates}
    problems = [
        ("candidates refer to unknown examples", [c.id for c in candidates if c.example_id not in ex_ids]),
        ("judgments refer to unknown candidates", [j.candidate_id for j in judgments if j.candidate_id not in by_cand]),
        ("judgments refer to unknown examples", [j.example_id for j in judgments if j.example_id not in ex_ids]),
        ("judgments name another example than their candidate does",
         [j.candidate_id for j in judgments
          if j.candidate_id in by_cand and by_cand[j.candidate_id].example_id != j.example_id]),
    ]
    for what, bad in problems:
        if bad:
            raise ValueError(f"{len(bad)} {what}, e.g. {bad[:3]}")
