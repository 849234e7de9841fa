"""The record schema: JSONL round trips, validation errors that name file / line / field, the
tolerated share of bad rows and the quarantine."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from reset.data.records import (
    Candidate,
    DataError,
    Example,
    Judgment,
    Rejected,
    read_jsonl,
    read_quarantine,
    write_jsonl,
    write_quarantine,
)


def _if(i: int = 0, **kw) -> dict:
    row = {
        "id": f"if-{i}",
        "source": "unit",
        "kind": "instruction",
        "instruction": f"Write a haiku about number {i}.",
        "response": "Quiet numbers fall / into the ledger of night / counting without end",
    }
    row.update(kw)
    return row


def _cd(i: int = 0, **kw) -> dict:
    row = {
        "id": f"cd-{i}",
        "source": "unit",
        "kind": "grounded",
        "instruction": "Where is the mill?",
        "response": "The mill is in Halstead.",
        "context": "The old mill stands in Halstead, next to the river.",
        "task": "extractive",
        "meta": {"answer": "Halstead"},
    }
    row.update(kw)
    return row


def _write_lines(path: Path, rows: list) -> Path:
    """Write rows (dicts are dumped as JSON, strings written as they are) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- round trips
def test_example_round_trip(tmp_path: Path) -> None:
    examples = [
        Example(**_if(0)),
        Example(**_if(1, constraints=[{"id": "punctuation:no_comma", "kwargs": {}}], meta={"topic": "ünïcode ✓"})),
        Example(**_cd(0)),
    ]
    path = tmp_path / "sub" / "dir" / "ex.jsonl"  # parent folders are created
    assert write_jsonl(path, examples) == 3
    got, bad = read_jsonl(path, Example)
    assert bad == []
    assert got == examples
    # Non-ASCII text is written as UTF-8, not escaped.
    assert "ünïcode ✓" in path.read_text(encoding="utf-8")
    # No temp file is left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["ex.jsonl"]


def test_candidate_and_judgment_round_trip(tmp_path: Path) -> None:
    cands = [
        Candidate("c1", "if-0", "text one", {"temperature": 0.7, "top_p": 0.9}, "m", False),
        Candidate("c2", "if-0", "", {}, "", True),  # an empty generation is a valid candidate
    ]
    judgments = [
        Judgment("c1", "if-0", {"instruction": 1.0, "faithfulness": None, "task": 0.25}, 0.625, "why", {"k": [1]}),
        Judgment("c2", "if-0", {"instruction": 0, "faithfulness": None, "task": 1}, 0.5),
    ]
    write_jsonl(tmp_path / "c.jsonl", cands)
    write_jsonl(tmp_path / "j.jsonl", judgments)
    assert read_jsonl(tmp_path / "c.jsonl", Candidate) == (cands, [])
    assert read_jsonl(tmp_path / "j.jsonl", Judgment) == (judgments, [])


def test_write_jsonl_accepts_dicts_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [Example(**_if(0)), Example(**_if(1))])
    assert write_jsonl(path, [_if(7)]) == 1
    got, _ = read_jsonl(path, Example)
    assert [e.id for e in got] == ["if-7"]


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "x.jsonl", [_if(0), "", "   ", _if(1, kind="nope")])
    with pytest.raises(DataError) as err:
        read_jsonl(path, Example)
    # The bad row is physically on line 4: blank lines still count.
    assert str(err.value).startswith(str(path))
    assert "line 4" in str(err.value)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("cls", "bad_row", "line_words"),
    [
        (Example, "{not json", ["invalid JSON"]),
        (Example, '["a", "list"]', ["JSON object"]),
        (Example, {k: v for k, v in _if(9).items() if k != "response"}, ["missing", "response"]),
        (Example, _if(9, colour="red"), ["unknown", "colour"]),
        (Example, _if(9, kind="chat"), ["'kind'", "chat"]),
        (Example, _if(9, task="translation"), ["'task'", "translation"]),
        (Example, _if(9, instruction="   "), ["'instruction'"]),
        (Example, _cd(9, context=None), ["'context'", "grounded"]),
        (Example, _cd(9, context="  \n"), ["'context'"]),
        (Example, _if(9, constraints={"id": "x"}), ["'constraints'"]),
        (Example, _if(9, constraints=[{"kwargs": {}}]), ["'constraints[0]'"]),
        (Example, _if(9, meta=["x"]), ["'meta'"]),
        (Candidate, {"id": "c9", "example_id": "e", "text": 3}, ["'text'"]),
        (Candidate, {"id": "c9", "example_id": "", "text": "t"}, ["'example_id'"]),
        (Judgment, {"candidate_id": "c", "example_id": "e", "scores": {"task": 1.5}, "combined": 0.5},
         ["'scores.task'", "1.5"]),
        (Judgment, {"candidate_id": "c", "example_id": "e", "scores": {"task": -0.01}, "combined": 0.5},
         ["'scores.task'"]),
        (Judgment, {"candidate_id": "c", "example_id": "e", "scores": {"task": "high"}, "combined": 0.5},
         ["'scores.task'"]),
        (Judgment, {"candidate_id": "c", "example_id": "e", "scores": {}, "combined": 1.01}, ["'combined'"]),
        (Judgment, {"candidate_id": "c", "example_id": "e", "scores": [], "combined": 0.5}, ["'scores'"]),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path: Path, cls, bad_row, line_words: list[str]) -> None:
    good = {
        Example: _if(0),
        Candidate: {"id": "c0", "example_id": "e", "text": "t"},
        Judgment: {"candidate_id": "c0", "example_id": "e", "scores": {"task": 1.0}, "combined": 1.0},
    }[cls]
    path = _write_lines(tmp_path / "data.jsonl", [good, good, bad_row])
    with pytest.raises(DataError) as err:
        read_jsonl(path, cls)
    msg = str(err.value)
    assert msg.startswith(str(path))
    assert "1 of 3 rows are invalid" in msg
    assert "line 3" in msg
    for word in line_words:
        assert word in msg


def test_judgment_with_null_axis_is_valid(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "j.jsonl", [
        {"candidate_id": "c", "example_id": "e", "scores": {"faithfulness": None, "task": 0}, "combined": 0},
    ])
    (j,), _ = read_jsonl(path, Judgment)
    assert j.scores == {"faithfulness": None, "task": 0}


def test_all_rows_bad_names_file_and_first_lines(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "all-bad.jsonl", [_if(i, kind="x") for i in range(5)])
    with pytest.raises(DataError) as err:
        read_jsonl(path, Example, max_bad_fraction=1.0)  # even when every bad row is tolerated
    msg = str(err.value)
    assert str(path) in msg and "no valid Example rows" in msg
    assert "line 1" in msg and "line 3" in msg and "and 2 more" in msg
    assert "line 4" not in msg


def test_empty_file(tmp_path: Path) -> None:
    for name, text in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DataError, match="empty") as err:
            read_jsonl(path, Example)
        assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="not found") as err:
        read_jsonl(path, Example)
    assert str(path) in str(err.value)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read") as err:
        read_jsonl(tmp_path, Example)
    assert str(tmp_path) in str(err.value)


def test_invalid_utf8_costs_only_its_line(tmp_path: Path) -> None:
    # issue 12: one latin-1 byte used to make the whole file unreadable; now that line alone is bad
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(_if(0)).encode() + b"\n" + '{"id": "caf\xe9"}'.encode("latin-1") + b"\n"
                     + json.dumps(_if(1)).encode() + b"\n")
    with pytest.raises(DataError) as err:
        read_jsonl(path, Example)
    assert str(err.value).startswith(str(path)) and "line 2" in str(err.value) and "0xe9" in str(err.value)
    good, bad = read_jsonl(path, Example, max_bad_fraction=0.5)
    assert [e.id for e in good] == ["if-0", "if-1"]
    assert [(r.line, r.category) for r in bad] == [(2, "invalid")] and "UTF-8" in bad[0].reason
    assert "caf" in bad[0].raw  # the row's text is kept (the bad byte shown as U+FFFD)


def test_bom_crlf_nesting_huge_numbers_and_nul_never_crash(tmp_path: Path) -> None:
    path = tmp_path / "messy.jsonl"
    rows = [
        b"\xef\xbb\xbf" + json.dumps(_if(0)).encode() + b"\r\n",  # BOM + CRLF: a good row
        b"[" * 50_000 + b"]" * 50_000 + b"\n",                      # deeper than the parser's recursion limit
        b'{"id": ' + b"9" * 5000 + b"}\n",                         # an integer too long to convert
        b'{"id": "a\x00b"}\n',                                      # a raw NUL byte
        json.dumps(_if(1)).encode() + b"\r\n",
    ]
    path.write_bytes(b"".join(rows))
    good, bad = read_jsonl(path, Example, max_bad_fraction=1.0)
    assert [e.id for e in good] == ["if-0", "if-1"]
    assert [r.line for r in bad] == [2, 3, 4]
    assert all(r.reason.startswith("invalid JSON") for r in bad)
    assert "nested too deeply" in bad[0].reason and "digits" in bad[1].reason


# ------------------------------------------------------------------------ tolerated bad rows
def test_max_bad_fraction_returns_rejected_rows(tmp_path: Path) -> None:
    bad_json = '{"id": "broken",'
    bad_kind = json.dumps(_if(2, kind="chat"))
    path = _write_lines(tmp_path / "mixed.jsonl", [_if(0), bad_json, _if(1), bad_kind, _if(3), _if(4), _if(5), _if(6)])
    # 2 bad of 8 rows = 0.25: allowed at 0.25 (the limit is inclusive), refused just below.
    good, bad = read_jsonl(path, Example, max_bad_fraction=0.25)
    assert [e.id for e in good] == ["if-0", "if-1", "if-3", "if-4", "if-5", "if-6"]
    assert [(r.file, r.line) for r in bad] == [(str(path), 2), (str(path), 4)]
    assert all(isinstance(r, Rejected) for r in bad)
    assert bad[0].raw == bad_json and bad[1].raw == bad_kind
    assert "invalid JSON" in bad[0].reason
    assert "'kind'" in bad[1].reason and "chat" in bad[1].reason
    assert str(bad[1]).startswith(f"{path}:4: ")
    with pytest.raises(DataError, match="2 of 8 rows are invalid"):
        read_jsonl(path, Example, max_bad_fraction=0.2)


def test_unknown_constraint_id_is_rejected_on_read(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "x.jsonl", [_if(0), _if(1, constraints=[{"id": "bogus:thing", "kwargs": {}}])])
    with pytest.raises(DataError, match="constraints"):
        read_jsonl(path, Example)


# ------------------------------------------------------------------------------------ quarantine
def test_quarantine_round_trip(tmp_path: Path) -> None:
    rejected = [
        Rejected("a.jsonl", 3, "invalid JSON: Expecting value (column 1)", "{oops"),
        Rejected("s3://b/k.jsonl", 10, "Example: field 'kind': 'x'", '{"kind": "x", "é": 1}'),
    ]
    path = tmp_path / "q" / "rejected.jsonl"
    assert write_quarantine(path, rejected) == 2
    assert read_quarantine(path) == rejected
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [asdict(r) for r in rejected]


def test_empty_quarantine_is_written_and_missing_reads_empty(tmp_path: Path) -> None:
    path = tmp_path / "rejected.jsonl"
    assert write_quarantine(path, []) == 0
    assert path.exists() and path.read_text() == ""
    assert read_quarantine(path) == []
    assert read_quarantine(tmp_path / "never-written.jsonl") == []


def test_rejected_rows_survive_a_quarantine_round_trip(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "in.jsonl", [_if(i) for i in range(9)] + ["[1, 2"])
    _, bad = read_jsonl(path, Example, max_bad_fraction=0.1)
    write_quarantine(tmp_path / "q.jsonl", bad)
    (back,) = read_quarantine(tmp_path / "q.jsonl")
    assert back == bad[0]
    assert (back.file, back.line, back.raw) == (str(path), 10, "[1, 2")
