"""Reading rows from data files without ever crashing on a bad one, and without ever holding more
than one bounded row in memory.

`RowReader` turns a file (JSON Lines, a JSON array, CSV / TSV or Parquet; `.gz` for the text
layouts) into `RawRow`s: the parsed value with its file and 1-based line, or, for a row that
cannot be read, the reason. What holds for every layout:

- a UTF-8 byte order mark at the start is skipped; CRLF line ends are read like LF;
- each line (JSONL) or record (CSV) is decoded on its own: a byte that is not UTF-8 costs that
  row only, reported with its line and the byte;
- any parser error (invalid JSON, nesting deeper than the parser's recursion limit, an integer too
  long to convert, a NUL byte) is that row's reason, never an exception;
- a row longer than `max_row_bytes` is skipped without being read into memory in full (its first
  characters are kept for the quarantine) and reported with its size;
- a JSON array (`[{...}, {...}]`, one or many lines per element) is read element by element with
  each element's first line, also when the file is named `.jsonl`;
- the content's SHA-256 digest and byte count are computed while reading.

The reader knows nothing of the record schema: it yields values; `reset.data.sources` converts
them into examples.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from reset.errors import DataError

BOM = b"\xef\xbb\xbf"
LAYOUTS = ("jsonl", "json", "csv", "tsv", "parquet")
DEFAULT_MAX_ROW_BYTES = 16 << 20
DEFAULT_RAW_CHARS = 20_000
_CHUNK = 1 << 20


@dataclass(slots=True)
class RawRow:
    """One physical row: its value, or why it could not be read (`error`, with a `category`)."""

    file: str
    line: int
    value: Any = None
    text: str = ""
    error: str = ""
    category: str = "invalid"
    element: int = 0

    def raw(self, limit: int = DEFAULT_RAW_CHARS) -> str:
        """The row's text for the quarantine, cut to `limit` characters (the cut is marked)."""
        text = self.text
        if not text and self.value is not None:
            try:
                text = json.dumps(self.value, ensure_ascii=False, default=str)
            except (TypeError, ValueError, RecursionError):
                text = repr(self.value)[: limit + 1]
        return preview(text, limit)


def preview(text: str, limit: int = DEFAULT_RAW_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ...[cut: {len(text):,} characters in all]"


@dataclass(frozen=True)
class ReadLimits:
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
    raw_chars: int = DEFAULT_RAW_CHARS


def parse_json(text: str) -> tuple[Any, str]:
    """(value, "") or (None, reason): every way json.loads can fail is a reason, never a raise."""
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "invalid JSON: nested too deeply for the parser"
    except (ValueError, OverflowError, MemoryError) as exc:  # e.g. an integer of 5,000 digits
        return None, f"invalid JSON: {str(exc).split(';')[0]}"


def layout_of(path: str | os.PathLike[str], head: bytes = b"") -> str:
    """The layout of a file from its name, else from its first bytes ("jsonl" when unsure)."""
    name = os.fspath(path).lower().removesuffix(".gz")
    if name.endswith(".parquet") or head.startswith(b"PAR1"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    first = head.removeprefix(BOM).lstrip()[:1]
    return "json" if first == b"[" else "jsonl"


def is_data_file(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return path.is_file() and not path.name.startswith(".") and name.endswith(
        (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet"))


def _open(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115 - closed by the caller


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with _open(path) as fh:
            return fh.read(n)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


@dataclass
class RowReader:
    """Iterate over the rows of one local file. `name` is what rows and errors call the file (the
    user's path or URI, not a download cache). `layout` "auto" decides from the name and content."""

    path: Path
    name: str
    layout: str = "auto"
    limits: ReadLimits = field(default_factory=ReadLimits)
    digest: str = ""
    bytes_read: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.path.is_dir():
            raise DataError(f"{self.name}: is a directory; give a data file")
        head = _head(self.path)
        detected = layout_of(self.path, head)
        if self.layout == "auto":
            self.layout = detected
        elif self.layout in ("jsonl", "json") and detected in ("jsonl", "json") and detected != self.layout:
            self.notes.append(f"{self.name}: a JSON {'array' if detected == 'json' else 'Lines file'}, read as such")
            self.layout = detected
        if self.layout not in LAYOUTS:
            raise DataError(f"{self.name}: unknown layout {self.layout!r}; known: {list(LAYOUTS)}")
        if self.layout == "jsonl" and head.removeprefix(BOM).lstrip(b" \t").split(b"\n", 1)[0].strip() == b"{":
            self.notes.append(f"{self.name}: looks like one JSON document spread over many lines; give JSON Lines "
                              "(one object per line) or a JSON array")
        name = self.path.name.lower().removesuffix(".gz")
        if self.layout == "json" and name.endswith((".jsonl", ".ndjson")):
            self.notes.append(f"{self.name}: a JSON array where JSON Lines was expected; read element by element")
        self._hash = hashlib.sha256()

    def __iter__(self) -> Iterator[RawRow]:
        try:
            if self.layout == "parquet":
                yield from self._parquet()
                return
            with _open(self.path) as fh:
                if self.layout == "jsonl":
                    yield from self._jsonl(fh)
                elif self.layout == "json":
                    yield from self._json_array(fh)
                else:
                    yield from self._csv(fh, "\t" if self.layout == "tsv" else ",")
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"{self.name}: cannot read: {exc}") from None
        finally:
            self.digest = self._hash.hexdigest()

    # ------------------------------------------------------------------------------- lines
    def _lines(self, fh: BinaryIO) -> Iterator[tuple[int, bytes | None, int]]:
        """(line number, bytes without the line end, size); bytes None when over max_row_bytes
        (then the rest of that line was read and discarded in chunks, never held)."""
        limit = self.limits.max_row_bytes
        readline = fh.readline
        update = self._hash.update
        lineno = 0
        while True:
            line = readline(limit + 2)
            if not line:
                return
            lineno += 1
            update(line)
            self.bytes_read += len(line)
            if lineno == 1 and line.startswith(BOM):
                line = line[3:]
            if not line.endswith(b"\n") and len(line) >= limit + 2:  # longer than the limit: skip
                size = len(line)
                head = line[: self.limits.raw_chars * 4]
                while True:
                    more = readline(_CHUNK)
                    update(more)
                    self.bytes_read += len(more)
                    size += len(more)
                    if not more or more.endswith(b"\n"):
                        size -= len(more) - len(more.rstrip(b"\r\n"))
                        break
                self._oversize_head = head
                yield lineno, None, size
                continue
            body = line.rstrip(b"\r\n")
            if len(body) > limit:
                self._oversize_head = body[: self.limits.raw_chars * 4]
                yield lineno, None, len(body)
                continue
            yield lineno, body, len(body)

    def _too_large(self, lineno: int, size: int) -> RawRow:
        head = self._oversize_head.decode("utf-8", "replace")
        return RawRow(self.name, lineno, None, preview(head, self.limits.raw_chars),
                      f"row of {size:,} bytes is larger than data.max_row_bytes ({self.limits.max_row_bytes:,})",
                      "too-large")

    def _jsonl(self, fh: BinaryIO) -> Iterator[RawRow]:
        name = self.name
        loads = json.loads
        for lineno, body, size in self._lines(fh):
            if body is None:
                yield self._too_large(lineno, size)
                continue
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(name, lineno, None, body.decode("utf-8", "replace"),
                             f"invalid UTF-8: byte 0x{body[exc.start]:02x} at column {exc.start + 1}")
                continue
            if not text or text.isspace():
                continue
            try:  # the common case without the bookkeeping of parse_json
                yield RawRow(name, lineno, loads(text), text)
            except Exception:  # noqa: BLE001 - every parser failure is this row's reason
                value, reason = parse_json(text)
                yield RawRow(name, lineno, value, text, reason)

    # ---------------------------------------------------------------------------------- csv
    def _csv(self, fh: BinaryIO, delimiter: str) -> Iterator[RawRow]:
        csv.field_size_limit(max(csv.field_size_limit(), self.limits.max_row_bytes))
        oversize: list[RawRow] = []

        def lines() -> Iterator[str]:
            for lineno, body, size in self._lines(fh):
                if body is None:
                    oversize.append(self._too_large(lineno, size))
                    yield "\n"
                    continue
                yield body.decode("utf-8", "surrogateescape") + "\n"

        reader = csv.reader(lines(), delimiter=delimiter)
        header: list[str] | None = None
        last = 0
        while True:
            try:
                record = next(reader)
                error = ""
            except StopIteration:
                break
            except csv.Error as exc:
                record, error = [], f"invalid CSV: {exc}"
            start, last = last + 1, reader.line_num
            while oversize:
                yield oversize.pop(0)
            text = delimiter.join(record)
            if error:
                yield RawRow(self.name, start, None, text, error)
                continue
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            bad = _SURROGATE.search(text)
            if bad:
                yield RawRow(self.name, start, None, text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                             f"invalid UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02x}")
                continue
            if header is None:
                header = [h.strip() for h in record]
                if len(set(header)) != len(header):
                    raise DataError(f"{self.name}: line {start}: repeated column names in the header {header}")
                continue
            if len(record) != len(header):
                yield RawRow(self.name, start, None, text,
                             f"{len(record)} columns where the header (line 1) has {len(header)}")
                continue
            yield RawRow(self.name, start, dict(zip(header, record, strict=True)), text)

    # ------------------------------------------------------------------------------ parquet
    def _parquet(self) -> Iterator[RawRow]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                self._hash.update(chunk)
                self.bytes_read += len(chunk)
        try:
            pf = pq.ParquetFile(self.path)
            batches = pf.iter_batches(batch_size=1024)
            rowno = 0
            for batch in batches:
                for value in batch.to_pylist():
                    rowno += 1
                    size = _approx_size(value)
                    if size > self.limits.max_row_bytes:
                        yield RawRow(self.name, rowno, None, "",
                                     f"row of about {size:,} bytes is larger than data.max_row_bytes "
                                     f"({self.limits.max_row_bytes:,})", "too-large")
                        continue
                    yield RawRow(self.name, rowno, value)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.name}: cannot read as Parquet: {exc}") from None

    # --------------------------------------------------------------------------- json array
    def _json_array(self, fh: BinaryIO) -> Iterator[RawRow]:
        """Elements of a top-level JSON array, one at a time, each with the line it starts on."""
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        limit = self.limits.max_row_bytes
        st = _ArrayState()

        def fill() -> bool:
            chunk = fh.read(_CHUNK)
            self._hash.update(chunk)
            self.bytes_read += len(chunk)
            text = decoder.decode(chunk, final=not chunk)
            if st.first:
                text = text.removeprefix("\ufeff")
                st.first = False
            st.buf += text
            return bool(chunk)

        eof = not fill()
        # the opening bracket
        while True:
            st.skip_ws()
            if st.pos < len(st.buf) or eof:
                break
            eof = not fill()
        if st.pos >= len(st.buf) or st.buf[st.pos] != "[":
            raise DataError(f"{self.name}: not a JSON array (it does not start with '[')")
        st.pos += 1
        elem = 0
        while True:
            st.trim()
            # whitespace and the comma between elements
            while True:
                st.skip_ws()
                if st.pos < len(st.buf) and st.buf[st.pos] == ",":
                    st.pos += 1
                    continue
                if st.pos < len(st.buf) or eof:
                    break
                eof = not fill()
            if st.pos >= len(st.buf):
                self.notes.append(f"{self.name}: the JSON array is not closed with ']' (read to the end anyway)")
                return
            if st.buf[st.pos] == "]":
                return
            elem += 1
            start = st.pos
            line = st.line_at(start)
            scan = _Scan(start)
            oversize_head = ""
            dropped = 0
            while True:
                end = scan.run(st.buf)
                if end is not None:
                    break
                if eof:
                    end = len(st.buf)
                    break
                if len(st.buf) - start + dropped > limit:  # too large: keep scanning, stop keeping it
                    if not oversize_head:
                        oversize_head = st.buf[start: start + self.limits.raw_chars]
                    cut = scan.pos
                    dropped += cut - start
                    st.drop_to(cut)
                    scan.pos = start = 0
                eof = not fill()
            size = dropped + end - start
            if oversize_head:
                st.count_lines_to(end)
                st.pos = end
                yield RawRow(self.name, line, None, preview(oversize_head, self.limits.raw_chars),
                             f"element {elem} of the JSON array: {size:,} characters, larger than "
                             f"data.max_row_bytes ({limit:,})", "too-large", elem)
                continue
            if end - start > limit:  # found whole in the buffer, but larger than the limit all the same
                st.pos = end
                yield RawRow(self.name, line, None, preview(st.buf[start:start + self.limits.raw_chars],
                                                            self.limits.raw_chars),
                             f"element {elem} of the JSON array: {end - start:,} characters, larger than "
                             f"data.max_row_bytes ({limit:,})", "too-large", elem)
                continue
            text = st.buf[start:end]
            st.pos = end
            if scan.depth != 0 or scan.in_str:
                yield RawRow(self.name, line, None, text, f"element {elem} of the JSON array: the file ends inside it",
                             element=elem)
                return
            bad = _SURROGATE.search(text)
            if bad:
                yield RawRow(self.name, line + text.count("\n", 0, bad.start()), None,
                             text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                             f"element {elem} of the JSON array: invalid UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02x}",
                             element=elem)
                continue
            value, reason = parse_json(text)
            if reason:
                reason = f"element {elem} of the JSON array: {reason}"
            yield RawRow(self.name, line, value, text, reason, element=elem)


_SURROGATE = re.compile("[\udc80-\udcff]")
_WS = re.compile(r"[ \t\r\n]*")
_STR_BODY = re.compile(r'(?:[^"\\]|\\.)*', re.S)
_PLAIN = re.compile(r'[^"\[\]{},]*')


class _ArrayState:
    """A text buffer over the file with line bookkeeping (line of buf[counted] is `line`)."""

    def __init__(self) -> None:
        self.buf = ""
        self.pos = 0
        self.first = True
        self.line = 1
        self.counted = 0

    def skip_ws(self) -> None:
        self.pos = _WS.match(self.buf, self.pos).end()

    def count_lines_to(self, i: int) -> None:
        if i > self.counted:
            self.line += self.buf.count("\n", self.counted, i)
            self.counted = i

    def line_at(self, i: int) -> int:
        self.count_lines_to(i)
        return self.line

    def drop_to(self, i: int) -> None:
        self.count_lines_to(i)
        self.buf = self.buf[i:]
        self.pos = max(0, self.pos - i)
        self.counted -= i

    def trim(self) -> None:
        if self.pos > _CHUNK:
            self.drop_to(self.pos)


class _Scan:
    """Finds where one JSON value ends (strings and bracket depth only; the parser judges the
    rest), resumable when the buffer ends inside the value."""

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.depth = 0
        self.in_str = False
        self.started = False

    def run(self, buf: str) -> int | None:
        n = len(buf)
        pos = self.pos
        while pos < n:
            if self.in_str:
                pos = _STR_BODY.match(buf, pos).end()
                if pos >= n or buf[pos] == "\\":  # the string (or an escape) goes on past the buffer
                    break
                self.in_str = False
                pos += 1
                if self.depth == 0:
                    self.pos = pos
                    return pos
                continue
            if not self.started:
                self.started = True
                c = buf[pos]
                if c not in "[{\"":  # a bare scalar: up to the next comma or bracket
                    end = _PLAIN.match(buf, pos).end()
                    if end >= n:
                        self.pos = pos
                        self.started = False
                        return None
                    self.pos = end
                    return end
            pos = _PLAIN.match(buf, pos).end()
            if pos >= n:
                break
            c = buf[pos]
            pos += 1
            if c == '"':
                self.in_str = True
            elif c in "[{":
                self.depth += 1
            elif c in "]}":
                self.depth -= 1
                if self.depth <= 0:
                    self.pos = pos
                    return pos
            elif c == "," and self.depth <= 0:
                self.pos = pos - 1
                return pos - 1
        self.pos = pos
        return None


def _approx_size(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_approx_size(v) + len(str(k)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_approx_size(v) for v in value)
    return 8
