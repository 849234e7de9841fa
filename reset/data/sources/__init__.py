"""Data sources in their published formats, read through one path whatever the format or the
place: a local file or directory, an s3:// URI, a Hugging Face dataset (hf://datasets/...) or the
built-in demo set.

    for item in SourceReader(src, "instruction", cfg):
        if isinstance(item, Rejected): ...      # file, line, reason, category
        else: example, file, line = item

One module per format (see `base` for what a module defines); `FORMATS` is the registry, in the
order detection tries them. Per source the reader:

1. resolves the path to local files (storage / hub), reads rows (`reset.data.reading`: BOM,
   CRLF, bad bytes, parser errors, oversize rows and JSON arrays handled there);
2. detects the format from the first rows' fields unless `format` names it;
3. converts each row (unknown fields kept under meta["extra_fields"], ignored or rejected);
4. checks each example: the record schema, a NUL character, data.max_field_chars;
5. applies the paper's split by slot: an instruction-following example that carries a context
   is removed from the IF side (or moved to the grounded side, `with_context: move`, where the
   format tells the task); a grounded slot keeps examples with a context;
6. counts everything in `report` and fails (DataError naming the source) when the invalid and
   oversize rows exceed data.max_bad_fraction, or nothing usable is left.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from reset.config import DataConfig, DataSource
from reset.data import storage
from reset.data.reading import RawRow, ReadLimits, RowReader, is_data_file
from reset.data.records import BAD_CATEGORIES, DataError, Example, Rejected, to_row
from reset.data.sources import (
    alpaca,
    cnn_dailymail,
    dolly,
    hub,
    mapped,
    natural_questions,
    reset_records,
    self_instruct,
    sharegpt,
)
from reset.data.sources.base import Converted, Ctx, Excluded, stable_id

FORMATS: dict[str, ModuleType] = {m.NAME: m for m in (
    reset_records, sharegpt, natural_questions, cnn_dailymail, dolly, self_instruct, alpaca)}
ALL_FORMATS: dict[str, ModuleType] = {**FORMATS, mapped.NAME: mapped}
BUILTINS = ("builtin:demo-instruction", "builtin:demo-grounded")
DETECT_ROWS = 50
CD_TASKS = ("extractive", "abstractive")
CONTEXT_REMOVED = "instruction-following example carries a context (removed, as in the paper)"


def detect(rows: list[dict[str, Any]]) -> str | None:
    """The format most of `rows` match (earlier formats win ties), or None."""
    votes: dict[str, int] = {}
    for row in rows:
        for name, mod in FORMATS.items():
            if mod.matches(row):
                votes[name] = votes.get(name, 0) + 1
                break
    if not votes:
        return None
    order = list(FORMATS)
    return max(votes, key=lambda n: (votes[n], -order.index(n)))


def source_name(src: DataSource) -> str:
    if src.name:
        return src.name
    if src.path.startswith("builtin:"):
        return src.path.removeprefix("builtin:") + ("-test" if src.split == "test" else "")
    base = src.path.rstrip("/").rsplit("/", 1)[-1].split("@")[0] or src.path
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        base = base.removesuffix(ext)
    return base or "data"


@dataclass
class SourceReport:
    """What reading one source did, for the data card and `data check`."""

    name: str
    slot: str
    path: str
    format: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)   # file, layout, bytes, digest
    rows: int = 0               # physical rows read (lines, elements, records)
    examples: int = 0           # examples made from them
    kept: int = 0
    moved: int = 0              # IF rows with a context moved to the grounded side
    rejected: dict[str, int] = field(default_factory=dict)       # category -> count
    reasons: dict[str, int] = field(default_factory=dict)        # excluded reasons -> count
    unknown_fields: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    first_bad: list[str] = field(default_factory=list)   # the first invalid / oversize rows, "line N: reason"
    first_any: list[str] = field(default_factory=list)   # the first rows not kept, whatever the reason
    stopped_at_limit: bool = False

    @property
    def bad(self) -> int:
        return sum(self.rejected.get(c, 0) for c in BAD_CATEGORIES)


class SourceReader:
    """Iterate over one configured source: (example, file, line) for each kept example and a
    `Rejected` for each row that was not kept. `slot` is "instruction", "grounded", or "auto"
    (each format's own side: `data check`)."""

    def __init__(self, src: DataSource, slot: str, cfg: DataConfig, cache_dir: str = ""):
        self.src, self.slot, self.cfg = src, slot, cfg
        self.cache_dir = cache_dir
        self.name = source_name(src)
        self.report = SourceReport(self.name, slot, src.path)
        self.limits = ReadLimits(cfg.max_row_bytes)
        self._raw_chars = self.limits.raw_chars

    # ------------------------------------------------------------------------------- files
    def _files(self) -> list[tuple[Path, str]]:
        """(local file, the name rows report) for each data file of the source."""
        path = self.src.path
        if hub.is_hub(path):
            local = hub.fetch(path, self.cache_dir or storage.default_cache_dir())
        else:
            local = storage.fetch(path, os.path.join(self.cache_dir, "s3") if self.cache_dir else None)
        if local.is_file():
            return [(local, path)]
        files = sorted(p for p in local.rglob("*") if is_data_file(p))
        if not files:
            raise DataError(f"{path}: is a directory with no data files (.jsonl, .json, .csv, .tsv, .parquet, "
                            f"optionally .gz)")
        return [(p, f"{path.rstrip('/')}/{p.relative_to(local).as_posix()}") for p in files]

    def _rows(self) -> Iterator[RawRow]:
        for local, name in self._files():
            reader = RowReader(local, name, "auto", self.limits)
            yield from reader
            self.report.files.append({"file": name, "layout": reader.layout, "bytes": reader.bytes_read,
                                      "digest": reader.digest})
            self.report.messages += reader.notes

    # ------------------------------------------------------------------------------ rejects
    def _reject(self, file: str, line: int, reason: str, raw: str, category: str = "invalid") -> Rejected:
        r = self.report
        r.rejected[category] = r.rejected.get(category, 0) + 1
        if category == "excluded":
            r.reasons[reason] = r.reasons.get(reason, 0) + 1
        where = f"line {line}: {reason}" if file == self.src.path else f"{file}:{line}: {reason}"
        if len(r.first_any) < 3:
            r.first_any.append(where)
        if len(r.first_bad) < 3 and category in BAD_CATEGORIES:
            r.first_bad.append(where)
        return Rejected(file, line, reason, raw, category, self.name)

    def _reject_example(self, file: str, line: int, ex: Example, reason: str, category: str) -> Rejected:
        raw = json.dumps(to_row(ex), ensure_ascii=False)
        return self._reject(file, line, reason, raw if len(raw) <= self._raw_chars else
                            f"{raw[: self._raw_chars]} ...[cut: {len(raw):,} characters in all]", category)

    # -------------------------------------------------------------------------------- iterate
    def __iter__(self) -> Iterator[tuple[Example, str, int] | Rejected]:
        if self.src.path.startswith("builtin:"):
            yield from self._builtin()
            return
        rows = self._rows()
        fmt_name = "mapped" if self.src.fields else self.src.format
        buffered: list[RawRow] = []
        if fmt_name == "auto":
            sample: list[dict[str, Any]] = []
            for raw in rows:
                buffered.append(raw)
                if isinstance(raw.value, dict) and not raw.error:
                    sample.append(raw.value)
                if len(sample) >= DETECT_ROWS or len(buffered) >= 100 * DETECT_ROWS:
                    break
            fmt_name = detect(sample) or ""
            if not fmt_name and sample:
                keys = sorted({k for row in sample for k in row})[:20]
                raise DataError(f"{self.src.path}: cannot tell the format from the fields {keys}; set `format:` "
                                f"(one of {list(FORMATS)}) or map the fields with `fields:`")
        mod = ALL_FORMATS.get(fmt_name) if fmt_name else None
        self.report.format = fmt_name or "unknown"
        yield from self._convert(_chain(buffered, rows), mod)
        self._finish()

    def _convert(self, rows: Iterator[RawRow], mod: ModuleType | None) -> Iterator[tuple[Example, str, int] | Rejected]:
        cfg, src, rep = self.cfg, self.src, self.report
        known = mapped.known(src.fields) if mod is mapped else (mod.KNOWN if mod else frozenset())
        label = getattr(mod, "LABEL", "row")
        native = mod is reset_records
        slot = self.slot if self.slot != "auto" else (mod.SLOT if mod else "any")
        ctx = Ctx(source=self.name, instruction=src.instruction, turns=src.turns, task=src.task,
                  fields=src.fields, notes=rep.notes)
        unknown_policy = cfg.unknown_fields
        max_chars = cfg.max_field_chars
        for raw in rows:
            rep.rows += 1
            if raw.error:
                yield self._reject(raw.file, raw.line, raw.error, raw.raw(self._raw_chars), raw.category)
                continue
            row = raw.value
            if not isinstance(row, dict):
                yield self._reject(raw.file, raw.line, f"{label}: row must be a JSON object, got {type(row).__name__}",
                                   raw.raw(self._raw_chars))
                continue
            if mod is None:
                yield self._reject(raw.file, raw.line, "format unknown", raw.raw(self._raw_chars))
                continue
            extra = row.keys() - known
            if extra:
                for k in extra:
                    rep.unknown_fields[k] = rep.unknown_fields.get(k, 0) + 1
                if unknown_policy == "reject":
                    yield self._reject(raw.file, raw.line, f"{label}: unknown field(s) {sorted(extra)}; expected "
                                       f"{sorted(known)} (data.unknown_fields: reject)", raw.raw(self._raw_chars))
                    continue
                extras = {k: row[k] for k in sorted(extra)} if unknown_policy == "meta" else None
                row = {k: v for k, v in row.items() if k not in extra}
            else:
                extras = None
            ctx.file, ctx.line = raw.file, raw.line
            try:
                converted = mod.convert(row, ctx)
            except Excluded as exc:
                yield self._reject(raw.file, raw.line, str(exc), raw.raw(self._raw_chars), "excluded")
                continue
            except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
                yield self._reject(raw.file, raw.line, f"{label}: {exc}", raw.raw(self._raw_chars))
                continue
            for conv in converted:
                rep.examples += 1
                out = self._check(conv, raw, extras, native, slot, label, max_chars)
                if isinstance(out, Rejected):
                    yield out
                    continue
                rep.kept += 1
                yield out, raw.file, raw.line
                if src.limit and rep.kept >= src.limit:
                    rep.stopped_at_limit = True
                    return

    def _check(self, conv: Converted, raw: RawRow, extras: dict[str, Any] | None, native: bool, slot: str,
               label: str, max_chars: int) -> Example | Rejected:
        ex, cd_task = conv
        if extras:
            ex.meta = {**ex.meta, "extra_fields": extras}
        for name in ("instruction", "context", "response"):
            value = getattr(ex, name)
            if isinstance(value, str):
                if len(value) > max_chars:
                    return self._reject(raw.file, raw.line, f"{label}: field {name!r} has {len(value):,} characters, "
                                        f"more than data.max_field_chars ({max_chars:,})", raw.raw(self._raw_chars),
                                        "too-large")
                if "\x00" in value:
                    return self._reject(raw.file, raw.line, f"{label}: field {name!r} contains a NUL character",
                                        raw.raw(self._raw_chars))
        try:
            ex.validate()
        except (TypeError, ValueError) as exc:
            return self._reject(raw.file, raw.line, f"{label}: {exc}", raw.raw(self._raw_chars))
        if native:  # the project's schema says the kind: a row of the other kind is a mistake in the data
            if slot in ("instruction", "grounded") and ex.kind != slot:
                return self._reject_example(raw.file, raw.line, ex, f"kind {ex.kind!r} given in the data.{slot} slot",
                                            "invalid")
            if ex.kind == "instruction" and ex.has_context:
                return self._reject_example(raw.file, raw.line, ex, CONTEXT_REMOVED, "invalid")
            return ex
        if slot == "any":
            slot = "grounded" if ex.kind == "grounded" else "instruction"
        src = self.src
        if slot == "instruction":
            if not ex.has_context:
                return ex
            task = ex.task if ex.kind == "grounded" else cd_task
            if src.with_context == "move" and task in CD_TASKS:
                self.report.moved += 1
                return replace(ex, kind="grounded", task=src.task or task)
            return self._reject(raw.file, raw.line, CONTEXT_REMOVED, raw.raw(self._raw_chars), "excluded")
        # the grounded slot
        if not ex.has_context:
            return self._reject(raw.file, raw.line, "no context: not a context-dependent example",
                                raw.raw(self._raw_chars), "excluded")
        task = src.task or (ex.task if ex.kind == "grounded" else cd_task)
        if task not in CD_TASKS:
            return self._reject(raw.file, raw.line, "has a context but no context-dependent task: set `task: "
                                "extractive` or `abstractive` for this source", raw.raw(self._raw_chars), "excluded")
        if ex.kind == "grounded" and ex.task == task:
            return ex
        return replace(ex, kind="grounded", task=task)

    def _builtin(self) -> Iterator[tuple[Example, str, int] | Rejected]:
        from reset.data.demo import build_demo

        path = self.src.path
        if path not in BUILTINS:
            raise DataError(f"data.{self.slot}: unknown builtin dataset {path!r}; known: {list(BUILTINS)}")
        seed = self.cfg.seed if self.src.seed < 0 else self.src.seed
        ifs, cds = build_demo(seed=seed, n_instruction=self.cfg.demo_size,
                              n_grounded=self.cfg.demo_grounded_size or self.cfg.demo_size,
                              families=self.cfg.demo_constraints)
        rows = ifs if path.endswith("instruction") else cds
        if seed != self.cfg.seed:  # another draw of the generator: ids of its own (repeated ids are dropped)
            rows = [replace(ex, id=f"{ex.id}-s{seed}") for ex in rows]
        self.report.format = "builtin"
        digest = hashlib.sha256()
        for ex in rows:  # the content's digest, as for a file (it depends on data.seed and demo_size)
            digest.update(json.dumps(to_row(ex), ensure_ascii=False, sort_keys=True).encode() + b"\n")
        self.report.files.append({"file": path, "layout": "builtin", "bytes": 0, "digest": digest.hexdigest()})
        for i, ex in enumerate(rows, start=1):
            self.report.rows += 1
            self.report.examples += 1
            self.report.kept += 1
            yield ex, path, i
            if self.src.limit and self.report.kept >= self.src.limit:
                self.report.stopped_at_limit = True
                break

    def _finish(self) -> None:
        rep, cfg, path = self.report, self.cfg, self.src.path
        if rep.rows == 0:
            raise DataError(f"{path}: empty dataset (no rows)")
        if rep.stopped_at_limit:
            return
        total = rep.rows
        hint = "".join(f" ({m.split(': ', 1)[-1]})" for m in rep.messages if "one JSON document" in m)
        if rep.bad and rep.bad / total > cfg.max_bad_fraction:
            raise DataError(f"{path}: {rep.bad} of {total} rows rejected, more than data.max_bad_fraction "
                            f"{cfg.max_bad_fraction:g}{hint}: " + _first(rep.first_bad, rep.bad))
        if not rep.kept:
            slot = "" if self.slot == "auto" else f" {self.slot}"
            n = sum(rep.rejected.values())
            raise DataError(f"{path}: no usable{slot} rows ({n} rejected){hint}: " + _first(rep.first_any, n))


def _first(shown: list[str], total: int) -> str:
    more = total - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _chain(first: list[RawRow], rest: Iterator[RawRow]) -> Iterator[RawRow]:
    yield from first
    yield from rest


def load(src: DataSource, slot: str, cfg: DataConfig, cache_dir: str = "") -> tuple[
        list[tuple[Example, str, int]], list[Rejected], SourceReport]:
    """Read a whole source into lists (small data, tests); `SourceReader` streams."""
    reader = SourceReader(src, slot, cfg, cache_dir)
    kept: list[tuple[Example, str, int]] = []
    bad: list[Rejected] = []
    for item in reader:
        (bad if isinstance(item, Rejected) else kept).append(item)  # type: ignore[arg-type]
    return kept, bad, reader.report


__all__ = ["ALL_FORMATS", "BUILTINS", "FORMATS", "SourceReader", "SourceReport", "detect", "load", "source_name",
           "stable_id"]
