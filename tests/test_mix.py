"""Data loading and mixing: ratio, the dev and test splits (test from its own sources, disjoint,
digests), seen prompts, determinism, dedupe and the rejections that load_source keeps (local JSONL
and s3://)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

from reset.config import DataConfig, DataSource
from reset.data.mix import dedupe, load_source, mix
from reset.data.records import DataError, Example, write_jsonl

# the `demo` fixture holds 40 instruction + 40 grounded examples (all prompts distinct)
N = 40


def _cfg(**kw) -> DataConfig:
    base = {"eval_per_kind": 5, "dev_per_kind": 0, "seen_prompts_per_kind": 4, "train_size": 0,
            "instruction_fraction": 0.5, "seed": 0}
    base.update(kw)
    return DataConfig(**base)


def _prompt(e: Example) -> tuple[str, str | None]:
    return e.instruction, e.context


def _ids(rows: list[Example]) -> list[str]:
    return [e.id for e in rows]


def _kinds(rows: list[Example]) -> Counter:
    return Counter(e.kind for e in rows)


def _ex(i: int, kind: str = "instruction", **kw) -> Example:
    row = {
        "id": f"u-{kind[:2]}-{i}",
        "source": "unit",
        "kind": kind,
        "instruction": f"Say something about item {i}.",
        "response": f"Item {i} is fine.",
        "context": f"Item {i} is described here." if kind == "grounded" else None,
        "task": "abstractive" if kind == "grounded" else "open",
    }
    row.update(kw)
    return Example(**row)


# ------------------------------------------------------------------------------------- mixing
def test_demo_fixture_has_no_duplicates(demo) -> None:
    ifs, cds = demo
    kept, bad = dedupe(ifs + cds)
    assert len(ifs) == len(cds) == N and len(kept) == 2 * N and bad == []


def test_mix_half_and_half_uses_everything(demo) -> None:
    res = mix(*demo, _cfg())
    # 5 of each kind held out, the other 35 of each kind in the 1:1 mixture
    assert _kinds(res.test) == {"instruction": 5, "grounded": 5}
    assert _kinds(res.train) == {"instruction": N - 5, "grounded": N - 5}
    assert res.stats["train_instruction"] == res.stats["train_grounded"] == N - 5
    assert res.stats["train"] == len(res.train) and res.stats["test"] == 10 and res.stats["dev"] == 0
    assert res.stats["valid_instruction"] == res.stats["valid_grounded"] == N
    assert res.rejected == [] and res.stats["rejected"] == 0


def test_mix_quarter_instruction_limited_by_grounded(demo) -> None:
    res = mix(*demo, _cfg(instruction_fraction=0.25))
    # 35 grounded available are 75 % of the mixture -> at most 35/0.75*0.25 = 11.67 -> 11 IF
    assert _kinds(res.train) == {"instruction": 11, "grounded": 35}


def test_mix_with_train_size(demo) -> None:
    res = mix(*demo, _cfg(train_size=20, instruction_fraction=0.25))
    assert _kinds(res.train) == {"instruction": 5, "grounded": 15}
    res = mix(*demo, _cfg(train_size=30, instruction_fraction=0.5))
    assert _kinds(res.train) == {"instruction": 15, "grounded": 15}


@pytest.mark.parametrize(("fraction", "kinds"), [(1.0, {"instruction": N - 5}), (0.0, {"grounded": N - 5})])
def test_mix_one_kind_only(demo, fraction: float, kinds: dict) -> None:
    res = mix(*demo, _cfg(instruction_fraction=fraction))
    assert _kinds(res.train) == kinds
    # the held-out set still covers both kinds
    assert _kinds(res.test) == {"instruction": 5, "grounded": 5}


def test_mix_with_one_source_empty(demo) -> None:
    ifs, _ = demo
    res = mix(ifs, [], _cfg(instruction_fraction=1.0))
    assert _kinds(res.train) == {"instruction": N - 5} and _kinds(res.test) == {"instruction": 5}


def test_eval_is_held_out_from_train(demo) -> None:
    res = mix(*demo, _cfg(eval_per_kind=8))
    assert not set(_ids(res.test)) & set(_ids(res.train))
    assert not {_prompt(e) for e in res.test} & {_prompt(e) for e in res.train}
    assert len(set(_ids(res.train))) == len(res.train)


def test_eval_is_held_out_even_for_near_duplicate_prompts(demo) -> None:
    ifs, cds = demo
    # a re-cased, re-spaced copy of every example under a new id: all must be rejected as duplicates
    copies = [dataclasses.replace(e, id=e.id + "-copy", instruction="  " + e.instruction.upper() + " ") for e in ifs]
    res = mix(ifs + copies, cds, _cfg(eval_per_kind=8))
    norm = {(" ".join(e.instruction.lower().split()), e.context) for e in res.test}
    assert not norm & {(" ".join(e.instruction.lower().split()), e.context) for e in res.train}
    assert len(res.rejected) == N


def test_seen_prompts_are_a_sample_of_train(demo) -> None:
    res = mix(*demo, _cfg(seen_prompts_per_kind=6))
    assert set(_ids(res.seen)) <= set(_ids(res.train))
    assert len(set(_ids(res.seen))) == len(res.seen)
    assert _kinds(res.seen) == {"instruction": 6, "grounded": 6}
    assert res.stats["seen_prompts"] == 12
    # more seen prompts requested than the mixture holds: all of that kind
    res = mix(*demo, _cfg(train_size=10, seen_prompts_per_kind=7))
    assert _kinds(res.seen) == {"instruction": 5, "grounded": 5}
    assert set(_ids(res.seen)) == set(_ids(res.train))


def test_mix_is_deterministic_per_seed(demo) -> None:
    a, b = mix(*demo, _cfg(seed=3)), mix(*demo, _cfg(seed=3))
    assert (_ids(a.train), _ids(a.test), _ids(a.seen)) == (_ids(b.train), _ids(b.test), _ids(b.seen))
    c = mix(*demo, _cfg(seed=4))
    assert set(_ids(a.test)) != set(_ids(c.test))
    assert _ids(a.train) != _ids(c.train)


def test_mix_does_not_mutate_its_inputs(demo) -> None:
    ifs, cds = demo
    before = (_ids(ifs), _ids(cds))
    mix(ifs, cds, _cfg(seed=9))
    assert (_ids(ifs), _ids(cds)) == before


# ------------------------------------------------------------------------------------- dedupe
def test_dedupe_names_the_original() -> None:
    a = _ex(1)
    same_prompt = dataclasses.replace(a, id="later", instruction="SAY   something about ITEM 1.", response="x")
    same_id = _ex(2, id=a.id)
    other_context = _ex(1, kind="grounded", id="g1", instruction=a.instruction)  # same words, with a context
    kept, bad = dedupe([a, same_prompt, same_id, other_context])
    assert _ids(kept) == [a.id, "g1"]
    assert [(r.line, r.reason) for r in bad] == [(2, f"duplicate prompt of {a.id!r}"), (3, f"duplicate id {a.id!r}")]
    assert json.loads(bad[0].raw)["id"] == "later"
    assert bad[0].file == "unit"


def test_mix_quarantines_duplicates(demo) -> None:
    ifs, cds = demo
    dup = dataclasses.replace(cds[3], id="dup-of-cd3", response="another answer")
    res = mix(ifs, cds + [dup], _cfg())
    assert len(res.rejected) == 1 and res.stats["rejected"] == 1
    assert res.rejected[0].reason == f"duplicate prompt of {cds[3].id!r}"
    assert "dup-of-cd3" not in _ids(res.train) + _ids(res.test)


# ----------------------------------------------------------------------------------- size errors
def test_too_few_examples_for_eval(demo) -> None:
    ifs, cds = demo
    with pytest.raises(DataError, match=r"^data: 0 dev \+ 5 test instruction examples requested "
                                        r"\(data\.dev_per_kind, data\.eval_per_kind\)") as err:
        mix(ifs[:5], cds, _cfg(eval_per_kind=5))
    assert "only 5 valid instruction examples" in str(err.value)


def test_train_size_too_large(demo) -> None:
    with pytest.raises(DataError, match=r"^data\.train_size: 100") as err:
        mix(*demo, _cfg(train_size=100))
    assert "50 instruction" in str(err.value) and "35 and 35" in str(err.value)


# ------------------------------------------------------------------------------- dev and test
def test_dev_and_test_are_disjoint_from_train_and_each_other(demo) -> None:
    res = mix(*demo, _cfg(eval_per_kind=5, dev_per_kind=6))
    assert _kinds(res.dev) == {"instruction": 6, "grounded": 6}
    assert _kinds(res.test) == {"instruction": 5, "grounded": 5}
    train, dev, test = set(_ids(res.train)), set(_ids(res.dev)), set(_ids(res.test))
    assert not (train & dev or train & test or dev & test)
    assert _kinds(res.train) == {"instruction": N - 11, "grounded": N - 11}
    assert res.stats["dev"] == 12 and res.stats["test"] == 10
    # dev is drawn first with the plan's own generator: asking for a test split does not move it
    assert _ids(mix(*demo, _cfg(eval_per_kind=3, dev_per_kind=6)).dev) == _ids(res.dev)


def _files(tmp_path: Path, cfg: DataConfig) -> dict:
    from reset.data.mix import mix_to_files

    out = {k: str(tmp_path / f"{k}.jsonl") for k in ("train", "dev", "test", "seen", "rejected")}
    rep = mix_to_files(
        cfg,
        out_train=out["train"],
        out_dev=out["dev"],
        out_test=out["test"],
        out_seen=out["seen"],
        out_rejected=out["rejected"],
    )
    rows = {k: [json.loads(x) for x in Path(out[k]).read_text().splitlines()] for k in ("train", "dev", "test", "seen")}
    return {"rep": rep, "rows": rows, "paths": out}


def test_test_sources_feed_only_the_test_split_and_leave_the_rest_of_the_plan_alone(tmp_path: Path) -> None:
    import hashlib

    pool = {"instruction": ["builtin:demo-instruction"], "grounded": ["builtin:demo-grounded"]}
    base = dict(demo_size=60, eval_per_kind=6, dev_per_kind=5, seen_prompts_per_kind=4, train_size=20)
    carved = _files(tmp_path / "a", DataConfig(**pool, **base))
    fresh_src = {k: v + [{"path": v[0], "split": "test", "seed": 77}] for k, v in pool.items()}
    fresh = _files(tmp_path / "b", DataConfig(**fresh_src, **base))
    rows = fresh["rows"]
    # every test row comes from the test draw (ids of their own), none from the pool
    assert rows["test"] and all(r["id"].endswith("-s77") for r in rows["test"])
    assert len(rows["test"]) == 12 and Counter(r["kind"] for r in rows["test"]) == {"instruction": 6, "grounded": 6}
    assert not any(r["id"].endswith("-s77") for w in ("train", "dev", "seen") for r in rows[w])
    # no test prompt repeats a training or dev prompt (the test sources are read last: their duplicates go)
    seen_prompts = {(r["instruction"], r.get("context")) for w in ("train", "dev") for r in rows[w]}
    assert not {(r["instruction"], r.get("context")) for r in rows["test"]} & seen_prompts
    # dev is the same draw whether test is carved from the pool or read from test sources
    assert carved["rows"]["dev"] == rows["dev"]
    # the digests in the card and the outputs are the files' SHA-256
    test_path = fresh["paths"]["test"]
    digest = hashlib.sha256(Path(test_path).read_bytes()).hexdigest()
    assert fresh["rep"].outputs["test"]["digest"] == digest == fresh["rep"].card["splits"]["test"]["digest"]
    card_sources = {s["name"]: s for s in fresh["rep"].card["sources"]}
    assert card_sources["demo-instruction-test"]["split"] == "test"
    assert card_sources["demo-instruction-test"]["splits"]["train"] == 0


def test_too_few_test_rows_in_test_sources_is_an_error_naming_the_key() -> None:
    from reset.data.mix import Mixer

    cfg = DataConfig(
        instruction=[
            "builtin:demo-instruction",
            {"path": "builtin:demo-instruction", "split": "test", "seed": 5, "limit": 3},
        ],
        grounded=["builtin:demo-grounded"],
        demo_size=40,
        eval_per_kind=4,
        dev_per_kind=2,
        train_size=10,
        seen_prompts_per_kind=2,
    )
    m = Mixer(cfg)
    for split in ("pool", "test"):
        for slot in ("instruction", "grounded"):
            for src in getattr(cfg, slot):
                if src.split == split:
                    m.read(src, slot)
    with pytest.raises(
        DataError,
        match=r"data\.eval_per_kind: 4 test instruction examples requested but the "
        r"`split: test` sources hold only 3",
    ):
        m.finish()


# ---------------------------------------------------------------------------------- load_source
def test_load_source_builtin_and_limit(demo) -> None:
    cfg = _cfg(demo_size=N)
    rows, bad = load_source(DataSource(path="builtin:demo-instruction"), "instruction", cfg)
    assert _ids(rows) == _ids(demo[0]) and bad == []
    rows, _ = load_source(DataSource(path="builtin:demo-grounded", limit=7), "grounded", cfg)
    assert _ids(rows) == _ids(demo[1][:7])
    with pytest.raises(DataError, match="unknown builtin"):
        load_source(DataSource(path="builtin:demo-chat"), "instruction", cfg)


def test_load_source_rejects_if_rows_with_context_and_wrong_kind(tmp_path: Path) -> None:
    path = tmp_path / "if.jsonl"
    rows = [_ex(0), _ex(1, context="Some passage."), _ex(2), _ex(3, kind="grounded"), _ex(4)]
    write_jsonl(path, rows)
    kept, bad = load_source(DataSource(path=str(path)), "instruction", _cfg(max_bad_fraction=0.5))
    assert _ids(kept) == [rows[0].id, rows[2].id, rows[4].id]
    assert [(r.file, r.line) for r in bad] == [(str(path), 2), (str(path), 4)]
    assert "carries a context" in bad[0].reason
    assert "kind 'grounded' given in the data.instruction slot" in bad[1].reason
    assert json.loads(bad[0].raw)["id"] == rows[1].id
    # the same file in the grounded slot keeps only the grounded row
    kept, bad = load_source(DataSource(path=str(path)), "grounded", _cfg(max_bad_fraction=1.0))
    assert _ids(kept) == [rows[3].id] and len(bad) == 4
    # rows rejected for their kind or context count towards data.max_bad_fraction, like invalid rows
    with pytest.raises(DataError, match=r"if\.jsonl: 2 of 5 rows rejected, more than data\.max_bad_fraction 0\.05"):
        load_source(DataSource(path=str(path)), "instruction", _cfg(max_bad_fraction=0.05))


def test_load_source_tolerates_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "if.jsonl"
    lines = [json.dumps(dataclasses.asdict(_ex(i))) for i in range(20)]
    lines.insert(7, '{"id": "half a row"')
    path.write_text("\n".join(lines) + "\n")
    kept, bad = load_source(DataSource(path=str(path)), "instruction", _cfg(max_bad_fraction=0.05))  # 1/21 < 0.05
    assert len(kept) == 20
    assert [(r.file, r.line, r.raw) for r in bad] == [(str(path), 8, '{"id": "half a row"')]
    assert "invalid JSON" in bad[0].reason
    with pytest.raises(DataError, match="1 of 21 rows rejected"):
        load_source(DataSource(path=str(path)), "instruction", _cfg(max_bad_fraction=0.0))


def test_load_source_context_rejection_names_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "if.jsonl"
    good = [json.dumps(dataclasses.asdict(_ex(i))) for i in range(30)]
    with_context = json.dumps(dataclasses.asdict(_ex(99, context="A passage.")))
    path.write_text("\n".join([good[0], "{broken", *good[1:], with_context]) + "\n")  # bad row on line 2
    _, bad = load_source(DataSource(path=str(path)), "instruction", _cfg(max_bad_fraction=0.1))
    assert [r.line for r in bad] == [2, 32]


def test_load_source_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_source(DataSource(path=str(tmp_path / "nope.jsonl")), "instruction", _cfg())
    with pytest.raises(DataError, match="is a directory"):
        load_source(DataSource(path=str(tmp_path)), "instruction", _cfg())


def test_load_source_from_s3(s3, tmp_path: Path) -> None:
    bucket = f"mix-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    rows = [_ex(i, kind="grounded") for i in range(5)] + [_ex(9)]  # the last is in the wrong slot
    local = tmp_path / "upload.jsonl"
    write_jsonl(local, rows)
    s3.upload_file(str(local), bucket, "data/cd.jsonl")
    uri = f"s3://{bucket}/data/cd.jsonl"
    kept, bad = load_source(
        DataSource(path=uri), "grounded", _cfg(max_bad_fraction=0.5), cache_dir=str(tmp_path / "cache")
    )
    assert kept == rows[:5]
    assert len(bad) == 1 and bad[0].file == uri and bad[0].line == 6  # the user's URI, not the cache path
    with pytest.raises(DataError) as err:
        load_source(
            DataSource(path=f"s3://{bucket}/data/none.jsonl"), "grounded", _cfg(), cache_dir=str(tmp_path / "cache")
        )
    assert f"s3://{bucket}/data/none.jsonl" in str(err.value)


def test_duplicates_across_files_are_quarantined_with_their_file_and_line(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(first, [_ex(i) for i in range(3)])
    write_jsonl(second, [_ex(10), dataclasses.replace(_ex(1), id="copy")])  # line 2 repeats a.jsonl's prompt
    origins: dict = {}
    rows = []
    for path in (first, second):
        kept, _ = load_source(DataSource(path=str(path)), "instruction", _cfg(), origins=origins)
        rows += kept
    _, bad = dedupe(rows, origins)
    assert [(r.file, r.line) for r in bad] == [(str(second), 2)]
    assert bad[0].reason == f"duplicate prompt of {_ex(1).id!r}"
