"""Loaders for the published formats and the readers under them, on fixture files the project
writes (tests/data_fixtures.py): every row lands where its tag says, from a local path and from
a real S3 endpoint (moto server); `data check` on each file and on broken ones."""

from __future__ import annotations

import gzip
import json
import random
import uuid
from pathlib import Path

import pytest

from pipelines.cli import main
from reset.config import DataConfig, DataSource
from reset.data import storage
from reset.data.reading import ReadLimits, RowReader
from reset.data.records import DataError, Example, read_jsonl
from reset.data.sources import SourceReader, detect, load
from tests.data_fixtures import Fixture, broken, write_fixtures

MAPPING = {"instruction": "question", "context": "passage", "response": "gold", "id": "qid", "answer": "gold"}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Fixture]:
    return write_fixtures(tmp_path_factory.mktemp("fixtures"))


def _src(f: Fixture, path: str | None = None, **kw) -> DataSource:
    if f.format == "mapped":
        kw = {"fields": MAPPING, "task": "extractive", **kw}
    return DataSource(path=path or str(f.path), **kw)


def _outcomes(kept, bad) -> dict[int, list[tuple[str, str]]]:
    got: dict[int, list[tuple[str, str]]] = {}
    for _, _, line in kept:
        got.setdefault(line, []).append(("kept", ""))
    for r in bad:
        got.setdefault(r.line, []).append((r.category, r.reason))
    return got


NAMES = ["dolly", "alpaca", "sharegpt", "self_instruct", "nq_simplified", "nq_common", "cnn_csv", "cnn_parquet",
         "cnn_jsonl", "array_named", "mapped"]


# ------------------------------------------------------------------------------ every format
@pytest.mark.parametrize("name", NAMES)
def test_each_row_lands_where_its_tag_says(fx, name: str) -> None:
    f = fx[name]
    kept, bad, rep = load(_src(f), f.slot, DataConfig())
    assert rep.format == f.format
    got = _outcomes(kept, bad)
    assert set(got) == {e.line for e in f.expect}, "a row was lost or invented"
    for e in f.expect:
        outcomes = got[e.line]
        if e.outcome == "kept":
            assert [o for o, _ in outcomes] == ["kept"] * e.examples, (e.line, outcomes)
        else:
            (category, reason), = outcomes
            assert category == e.outcome and e.words in reason, (e.line, outcomes)
            assert all(r.file == str(f.path) and r.source == rep.name for r in bad)
    assert rep.kept == f.kept_examples and rep.rows == len(f.expect)
    for ex, _, _ in kept:
        ex.validate()
        assert ex.kind == f.slot or f.slot == "any"
        assert (ex.kind == "grounded") == ex.has_context  # the paper's split: no IF example keeps a context
        assert ex.source == rep.name


def test_dolly_categories_and_the_move_option(fx) -> None:
    f = fx["dolly"]
    kept, _, rep = load(_src(f, with_context="move"), "instruction", DataConfig())
    moved = {ex.instruction: ex.task for ex, _, _ in kept if ex.kind == "grounded"}
    # the three context-dependent categories move; a context in open_qa / classification never does
    assert moved == {"Who wrote the novel?": "extractive", "Extract the city names.": "extractive",
                     "Summarize this paragraph.": "abstractive"}
    assert rep.moved == 3 and rep.rejected["excluded"] == 2
    # in the grounded slot, Dolly gives exactly its context-dependent rows
    kept, bad, _ = load(_src(f), "grounded", DataConfig())
    assert {ex.instruction for ex, _, _ in kept} == set(moved)
    assert sum(r.category == "excluded" for r in bad) == f.count("kept") + 2


def test_unknown_fields_are_kept_ignored_or_rejected(fx) -> None:
    f = fx["dolly"]
    line = next(e.line for e in f.expect if e.outcome == "kept" and e.line == 8)
    kept, _, rep = load(_src(f), "instruction", DataConfig())
    (ex,) = [ex for ex, _, ln in kept if ln == line]
    assert ex.meta["extra_fields"] == {"source_url": "https://example.org/x"}
    assert rep.unknown_fields == {"source_url": 1}
    kept, _, rep = load(_src(f), "instruction", DataConfig(unknown_fields="ignore"))
    assert "extra_fields" not in next(ex for ex, _, ln in kept if ln == line).meta and rep.unknown_fields
    kept, bad, _ = load(_src(f), "instruction", DataConfig(unknown_fields="reject", max_bad_fraction=0.1))
    assert line not in {ln for _, _, ln in kept}
    assert any(r.line == line and "unknown field(s) ['source_url']" in r.reason for r in bad)


def test_ids_are_the_rows_own_or_a_stable_content_hash(fx, tmp_path) -> None:
    f = fx["alpaca"]
    kept = [ex for ex, _, _ in load(_src(f), "instruction", DataConfig())[0]]
    first = [ex.id for ex in kept]
    again = [ex.id for ex, _, _ in load(_src(f), "instruction", DataConfig())[0]]
    assert first == again and len(set(first)) == len(first)
    # the same rows in another order, as JSONL, give the same ids (content, not position)
    rows = [{"instruction": ex.instruction, "input": "", "output": ex.response} for ex in kept]
    random.Random(1).shuffle(rows)
    other = tmp_path / "alpaca.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert {ex.id for ex, _, _ in load(_src(f, str(other)), "instruction", DataConfig())[0]} == set(first)
    # formats with ids keep theirs
    sg = [ex.id for ex, _, _ in load(_src(fx["sharegpt"]), "instruction", DataConfig())[0]]
    assert sg[:3] == ["c1#0", "c2#0", "c3#0"]


def test_sharegpt_turns(fx) -> None:
    f = fx["sharegpt"]
    kept, _, rep = load(_src(f, turns="all"), "instruction", DataConfig())
    by_id = {ex.id: ex for ex, _, _ in kept}
    assert (by_id["c1#0"].instruction, by_id["c1#1"].instruction) == ("What is a comet?", "Shorter.")
    assert by_id["c2#0"].instruction == "Name a planet."   # the assistant's greeting before it is skipped
    assert by_id["c3#0"].meta["system"] == "Be brief."
    assert by_id["c5#0"].instruction == "Name a river."    # a human turn without an answer is skipped
    assert by_id["c6#0"].response == "Iron."              # role/content messages read the same way
    assert rep.notes["sharegpt: turns before the first human turn skipped"] == 1
    first, _, _ = load(_src(f), "instruction", DataConfig())
    assert len(kept) == len(first) + 1 and "c1#1" not in {ex.id for ex, _, _ in first}


def test_natural_questions_context_and_answer(fx) -> None:
    kept, bad, _ = load(_src(fx["nq_simplified"]), "grounded", DataConfig())
    for ex, _, _ in kept:
        assert "<P>" not in ex.context and "</P>" not in ex.context
        assert ex.meta["answer"] == ex.response and ex.response in ex.context
        assert ex.task == "extractive" and ex.instruction.endswith("?")
    long_page = next(ex for ex, _, line in kept if line == 6)
    assert len(long_page.context) < 1000  # the long answer, not the 400 KB page
    reasons = {r.line: r.reason for r in bad}
    assert "long answer only" in reasons[2] and "yes/no" in reasons[3] and "no answer" in reasons[4]
    kept, _, _ = load(_src(fx["nq_common"]), "grounded", DataConfig())
    assert [ex.response for ex, _, _ in kept[:3]] == ["the Mediterranean Sea", "a major river", "Africa"]


def test_cnn_rows_are_the_same_from_csv_parquet_and_jsonl(fx) -> None:
    csv_rows = load(_src(fx["cnn_csv"]), "grounded", DataConfig())[0]
    pq_rows = load(_src(fx["cnn_parquet"]), "grounded", DataConfig())[0]
    jsonl_rows = load(_src(fx["cnn_jsonl"]), "grounded", DataConfig())[0]
    assert [ex for ex, _, _ in csv_rows] == [ex for ex, _, _ in pq_rows] == [ex for ex, _, _ in jsonl_rows]
    first = csv_rows[0][0]
    assert first.response == "Storm hits coast. Power lost in homes." and first.task == "abstractive"
    assert first.instruction == "Summarize the article in three sentences."
    assert first.context.startswith("(CNN)") and "\n" in first.context  # a quoted multi-line field
    custom = load(_src(fx["cnn_csv"], instruction="Write a headline."), "grounded", DataConfig())[0]
    assert custom[0][0].instruction == "Write a headline."


def test_mapped_shape_needs_its_mapping(fx) -> None:
    f = fx["mapped"]
    with pytest.raises(DataError, match="cannot tell the format from the fields") as err:
        load(DataSource(path=str(f.path)), "grounded", DataConfig())
    assert "passage" in str(err.value) and "fields:" in str(err.value)
    kept, _, rep = load(_src(f), "grounded", DataConfig())
    ex = kept[0][0]
    assert rep.format == "mapped" and ex.id == "m0" and ex.meta["answer"] == ex.response and ex.task == "extractive"
    for bad, key in [({"fields": {"instruction": "q"}}, "response"), ({"fields": {"prompt": "q", "response": "a",
                     "instruction": "x"}}, "unknown key"), ({"format": "dolly", "fields": MAPPING}, "format"),
                     ({"format": "mapped"}, "field mapping")]:
        with pytest.raises(ValueError, match=key):
            DataSource(path="x.csv", **bad)


def test_format_override(tmp_path) -> None:
    path = tmp_path / "instances.jsonl"  # Self-Instruct's instance file looks like Alpaca
    path.write_text(json.dumps({"instruction": "List two fruits.", "input": "", "output": "Apple, pear."}) + "\n")
    assert load(DataSource(path=str(path)), "instruction", DataConfig())[2].format == "alpaca"
    kept, _, rep = load(DataSource(path=str(path), format="self-instruct"), "instruction", DataConfig())
    assert rep.format == "self-instruct" and kept[0][0].response == "Apple, pear."
    assert detect([{"prompt": "p", "completion": "c"}] * 3 + [{"instruction": "i", "output": "o"}]) == "self-instruct"


# ----------------------------------------------------------------------------------- from S3
def test_every_fixture_loads_the_same_from_s3(fx, s3, tmp_path) -> None:
    bucket = f"fx-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for name in NAMES:
        f = fx[name]
        uri = f"s3://{bucket}/data/{f.path.name}"
        storage.upload(f.path, uri)
        local_kept, local_bad, _ = load(_src(f), f.slot, DataConfig())
        kept, bad, rep = load(_src(f, uri), f.slot, DataConfig(), cache_dir=str(tmp_path / "cache"))
        assert [ex for ex, _, _ in kept] == [ex for ex, _, _ in local_kept], name
        assert [(r.line, r.reason, r.category) for r in bad] == [(r.line, r.reason, r.category) for r in local_bad]
        assert all(file == uri for _, file, _ in kept) and all(r.file == uri for r in bad)  # the URI, not the cache
        assert rep.files[0]["digest"] == load(_src(f), f.slot, DataConfig())[2].files[0]["digest"]


def test_a_prefix_of_shards_is_one_source(fx, s3, tmp_path) -> None:
    bucket = f"sh-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    lines = fx["nq_common"].path.read_text().splitlines(keepends=True)
    for i in range(2):
        shard = tmp_path / f"part-{i}.jsonl"
        shard.write_text("".join(lines[i::2]))
        storage.upload(shard, f"s3://{bucket}/nq/part-{i}.jsonl")
    kept, bad, rep = load(DataSource(path=f"s3://{bucket}/nq/"), "grounded", DataConfig(),
                          cache_dir=str(tmp_path / "cache"))
    assert [f["file"] for f in rep.files] == [f"s3://{bucket}/nq/part-0.jsonl", f"s3://{bucket}/nq/part-1.jsonl"]
    assert len(kept) + len(bad) == len(lines)
    assert {r.file for r in bad} <= {f["file"] for f in rep.files}


def test_hub_datasets_need_the_hub(tmp_path, monkeypatch) -> None:
    # the code path exists for clusters that reach the hub; here (no hub, HF_HUB_OFFLINE) it must fail clearly
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    uri = "hf://datasets/databricks/databricks-dolly-15k"
    with pytest.raises(DataError) as err:
        load(DataSource(path=uri), "instruction", DataConfig(), cache_dir=str(tmp_path))
    assert str(err.value).startswith(uri) and "Hugging Face hub" in str(err.value)
    with pytest.raises(DataError, match="expected hf://datasets/<owner>/<name>"):
        load(DataSource(path="hf://datasets/only-owner"), "instruction", DataConfig(), cache_dir=str(tmp_path))


# ------------------------------------------------------------------------------------ reading
def _rows(path: Path, **kw):
    reader = RowReader(path, str(path), "auto", ReadLimits(**kw))
    return list(reader), reader


def test_an_oversize_line_is_quarantined_without_reading_it_whole(tmp_path) -> None:
    path = tmp_path / "big.jsonl"
    small = json.dumps({"instruction": "a", "output": "b"})
    huge = json.dumps({"instruction": "x" * 3_000_000, "output": "b"})
    path.write_text("\n".join([small, huge, small]) + "\n")
    rows, reader = _rows(path, max_row_bytes=100_000, raw_chars=500)
    assert [(r.line, bool(r.error)) for r in rows] == [(1, False), (2, True), (3, False)]
    assert rows[1].category == "too-large"
    assert f"{len(huge):,} bytes" in rows[1].error and "data.max_row_bytes (100,000)" in rows[1].error
    assert len(rows[1].raw(500)) < 600 and "cut" in rows[1].raw(500)
    assert reader.bytes_read == path.stat().st_size  # read to the end, digest over everything
    # through a source: quarantined as too large, and counted towards max_bad_fraction
    kept, bad, rep = load(DataSource(path=str(path)), "instruction", DataConfig(max_row_bytes=100_000,
                                                                                  max_bad_fraction=0.5))
    assert [ln for _, _, ln in kept] == [1, 3] and [(r.line, r.category) for r in bad] == [(2, "too-large")]
    assert rep.bad == 1
    with pytest.raises(DataError, match="1 of 3 rows rejected"):
        load(DataSource(path=str(path)), "instruction", DataConfig(max_row_bytes=100_000))


def test_json_array_elements_have_their_lines_and_fail_alone(tmp_path) -> None:
    path = tmp_path / "arr.json"
    path.write_bytes(
        b'\xef\xbb\xbf[\r\n  {"a": 1,\r\n   "b": "two"},\r\n  {"a": "caf\xe9"},\r\n  '
        + b"[" * 5000
        + b"]" * 5000
        + b',\r\n  {"a": oops},\r\n  {"a": "x" "y"},\r\n  "text",\r\n'
        + b'  {"big": "'
        + b"z" * 5000
        + b'"},\r\n  {"a": 3}\r\n]\r\n'
    )
    rows, _ = _rows(path, max_row_bytes=4000)
    got = [(r.line, r.element, r.category, r.error.split(":")[0] if r.error else r.value) for r in rows]
    assert got == [
        (2, 1, "invalid", {"a": 1, "b": "two"}),
        (4, 2, "invalid", "element 2 of the JSON array"),
        (5, 3, "too-large", "element 3 of the JSON array"),  # 10,000 brackets are over the 4,000 limit
        (6, 4, "invalid", "element 4 of the JSON array"),
        (7, 5, "invalid", "element 5 of the JSON array"),
        (8, 6, "invalid", "text"),
        (9, 7, "too-large", "element 7 of the JSON array"),
        (10, 8, "invalid", {"a": 3}),
    ]
    assert "UTF-8" in rows[1].error and "0xe9" in rows[1].error
    rows, _ = _rows(path, max_row_bytes=1 << 20)
    assert "nested too deeply" in rows[2].error and rows[6].value == {"big": "z" * 5000}


def test_a_truncated_json_array(tmp_path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[{"a": 1}, {"a": 2}, {"a": "never clo')
    rows, _ = _rows(path)
    assert [r.value for r in rows[:2]] == [{"a": 1}, {"a": 2}]
    assert rows[2].line == 1 and "ends inside" in rows[2].error


def test_a_json_array_in_a_jsonl_file(tmp_path) -> None:
    ex = {"id": "a", "source": "s", "kind": "instruction", "instruction": "Hi.", "response": "Hello."}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps([ex, {**ex, "id": "b"}], indent=2))
    good, bad = read_jsonl(path, Example)  # the step-to-step reader too
    assert [e.id for e in good] == ["a", "b"] and bad == []
    rows, reader = _rows(path)
    assert reader.layout == "json" and "JSON array where JSON Lines was expected" in reader.notes[0]


def test_csv_tsv_and_gzip(tmp_path) -> None:
    path = tmp_path / "t.tsv.gz"
    path.write_bytes(
        gzip.compress(
            b"\xef\xbb\xbfquestion\tcontext\tanswers\r\nq1\tc1\ta1\r\nq2\tonly two\r\nq3\tc\xe93\ta3\r\nq4\tc4\ta4\r\n"
        )
    )
    rows, reader = _rows(path)
    assert reader.layout == "tsv"
    assert [r.line for r in rows] == [2, 3, 4, 5]
    assert rows[0].value == {"question": "q1", "context": "c1", "answers": "a1"}
    assert rows[1].error == "2 columns where the header (line 1) has 3"
    assert rows[2].error == "invalid UTF-8: byte 0xe9" and rows[2].text.startswith("q3\tc")
    assert rows[3].value == {"question": "q4", "context": "c4", "answers": "a4"}


def test_an_unreadable_file_names_itself(tmp_path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError) as err:
        load(DataSource(path=str(path)), "instruction", DataConfig())
    assert str(err.value).startswith(str(path)) and "Parquet" in str(err.value)


# -------------------------------------------------------------------------------- data check
@pytest.mark.parametrize("name", NAMES[:-1])
def test_data_check_accepts_each_fixture(fx, name: str, capsys) -> None:
    f = fx[name]
    assert main(["data", "check", str(f.path)]) == 0
    out = capsys.readouterr().out
    assert f"{f.path}: format {f.format}" in out and "usable: yes" in out
    assert f"examples kept {f.kept_examples:,}" in out
    for e in [e for e in f.expect if e.outcome != "kept"][:3]:
        assert f"{f.path}:{e.line}: " in out  # rows not kept, with file and line
    assert "# Data card" in out and "## Quarantine" in out


def test_data_check_refuses_broken_files(tmp_path, capsys) -> None:
    files = broken(tmp_path, random.Random(0))
    for name, words in [
        ("empty", "empty dataset"),
        ("garbage", "6 of 6 rows rejected"),
        ("unknown_shape", "cannot tell the format"),
        ("mostly_bad", "max_bad_fraction"),
    ]:
        assert main(["data", "check", str(files[name])]) == 1, name
        err = capsys.readouterr().err
        assert "usable: NO" in err and words in err and str(files[name]) in err, (name, err)
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["data", "check", str(files["mostly_bad"]), "--max-bad-fraction", "0.6"]) == 0
    assert main(["data", "check", str(files["empty"]), "--format", "nope"]) == 2


def test_data_check_writes_the_quarantine_and_the_card(fx, tmp_path, capsys) -> None:
    f = fx["dolly"]
    q, card = tmp_path / "q.jsonl", tmp_path / "card.html"
    assert main(["data", "check", str(f.path), "--show", "2", "--quarantine", str(q), "--card", str(card)]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in q.read_text().splitlines()]
    assert [r["line"] for r in rows] == [e.line for e in f.expect if e.outcome != "kept"]
    assert f"and {len(rows) - 2} more (all in {q})" in out
    html = card.read_text()
    assert html.startswith("<!doctype html>") and "dolly" in html and "<script" not in html


def test_data_check_on_s3_and_with_a_slot(fx, s3, tmp_path, capsys) -> None:
    bucket = f"chk-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    storage.upload(fx["nq_common"].path, f"s3://{bucket}/nq.jsonl")
    assert main(["data", "check", f"s3://{bucket}/nq.jsonl"]) == 0
    assert f"s3://{bucket}/nq.jsonl: format natural-questions" in capsys.readouterr().out
    # NQ as instruction data: every row carries a context, so nothing is usable there
    assert main(["data", "check", str(fx["nq_common"].path), "--slot", "instruction"]) == 1
    assert "no usable instruction rows" in capsys.readouterr().err


def test_source_reader_streams(tmp_path) -> None:
    """The reader hands out rows as it reads them: a row appended to the file after the first
    example was taken is still read (a reader that read the file up front would miss it), and every
    example arrives once, in file order, with its own line number."""
    path = tmp_path / "dolly.jsonl"

    def line(i: int) -> str:
        return json.dumps({"instruction": f"Question {i}?", "context": "", "response": f"Answer {i}.",
                           "category": "open_qa"}) + "\n"

    n = 3000  # far more than format detection looks at (and than one read buffer holds)
    path.write_text("".join(line(i) for i in range(1, n + 1)))
    reader = iter(SourceReader(DataSource(path=str(path)), "instruction", DataConfig()))
    first = next(reader)
    with open(path, "a") as fh:
        fh.write(line(n + 1))
    rest = list(reader)
    got = [first, *rest]
    assert all(isinstance(x, tuple) for x in got)  # nothing rejected
    assert [(ln, ex.instruction, ex.response) for ex, _, ln in got] == [
        (i, f"Question {i}?", f"Answer {i}.") for i in range(1, n + 2)
    ]


def test_the_paper_config_reads_the_papers_datasets_through_the_loaders() -> None:
    from reset.config import load_config
    from reset.data.sources import ALL_FORMATS

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "paper-7b.yaml")
    assert [s.format for s in cfg.data.instruction] == ["dolly", "sharegpt", "self-instruct", "alpaca"]
    assert [s.format for s in cfg.data.grounded] == ["natural-questions", "cnn-dailymail"]
    assert all(s.format in ALL_FORMATS for s in cfg.data.instruction + cfg.data.grounded)
    assert all(s.with_context == "remove" for s in cfg.data.instruction)  # the paper removes them


def test_one_pretty_printed_json_document_is_named_as_such(tmp_path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [{"instruction": "a", "output": "b"}]}, indent=2))
    for tolerated in (1.0, 0.05):  # whichever check fails, the message says what the file looks like
        with pytest.raises(DataError, match="one JSON document spread over many lines") as err:
            load(DataSource(path=str(path), format="alpaca"), "instruction", DataConfig(max_bad_fraction=tolerated))
        assert str(err.value).startswith(str(path))
