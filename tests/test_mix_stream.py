"""The streamed mix (`mix_to_files`, what the mix step runs): one recipe with the list API, seeded,
weights and caps, the stratified held-out split, near-duplicates, the quarantine, the data card
and the mix step's MLflow record."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from reset.config import DataConfig
from reset.data import dedup as D
from reset.data.card import flat_metrics, to_html, to_markdown, whitespace_meter
from reset.data.mix import dedupe, load_source, mix, mix_to_files
from reset.data.records import Example, read_jsonl, read_quarantine, write_jsonl
from tests.data_fixtures import Fixture, write_fixtures


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Fixture]:
    return write_fixtures(tmp_path_factory.mktemp("fixtures"))


def _cfg(fx, **kw) -> DataConfig:
    base = {
        "instruction": [{"path": str(fx["dolly"].path)}, {"path": str(fx["alpaca"].path)},
                        {"path": str(fx["sharegpt"].path)}, {"path": str(fx["self_instruct"].path)}],
        "grounded": [{"path": str(fx["nq_simplified"].path)}, {"path": str(fx["cnn_csv"].path)}],
        "eval_per_kind": 12, "dev_per_kind": 0, "seen_prompts_per_kind": 10, "seed": 0,
    }
    base.update(kw)
    return DataConfig(**base)


def _run(tmp: Path, cfg: DataConfig, meter=None):
    out = {k: str(tmp / f"{k}.jsonl") for k in ("train", "dev", "test", "seen", "rejected")}
    rep = mix_to_files(cfg, out_train=out["train"], out_dev=out["dev"], out_test=out["test"], out_seen=out["seen"],
                       out_rejected=out["rejected"], meter=meter)
    rows = {k: read_jsonl(out[k], Example)[0] if Path(out[k]).stat().st_size else []
            for k in ("train", "dev", "test", "seen")}
    return rep, rows, read_quarantine(out["rejected"])


# ------------------------------------------------------------------------------------- recipe
def test_streamed_and_list_mix_are_one_recipe(fx, tmp_path) -> None:
    cfg = _cfg(fx)
    rep, rows, quarantine = _run(tmp_path, cfg)
    origins: dict = {}
    lists: dict[str, list[Example]] = {"instruction": [], "grounded": []}
    bad = []
    for slot in lists:
        for src in getattr(cfg, slot):
            kept, rejected = load_source(src, slot, cfg, origins=origins)
            lists[slot] += kept
            bad += rejected
    res = mix(lists["instruction"], lists["grounded"], cfg, origins)
    for name, split in (("train", res.train), ("dev", res.dev), ("test", res.test), ("seen", res.seen)):
        assert [e.id for e in rows[name]] == [e.id for e in split], name
    assert [(r.file, r.line, r.reason) for r in quarantine] == [(r.file, r.line, r.reason) for r in bad + res.rejected]
    assert rep.stats == {**res.stats, "rejected": len(bad) + len(res.rejected)}


def test_outputs_are_seeded(fx, tmp_path) -> None:
    a = _run(tmp_path / "a", _cfg(fx))
    b = _run(tmp_path / "b", _cfg(fx))
    c = _run(tmp_path / "c", _cfg(fx, seed=1))
    assert a[0].outputs["train"]["digest"] == b[0].outputs["train"]["digest"]
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert {e.id for e in a[1]["test"]} != {e.id for e in c[1]["test"]}
    assert not list(tmp_path.glob("*/.mix-spool-*"))  # the spool is gone


def test_held_out_is_stratified_by_source_and_task(fx, tmp_path) -> None:
    cfg = _cfg(fx, eval_per_kind=40)
    rep, rows, _ = _run(tmp_path, cfg)
    card = rep.card
    for kind in ("instruction", "grounded"):
        sizes = {s["name"]: s["after_dedupe"] for s in card["sources"] if s["slot"] == kind}
        got = Counter(card_src for card_src in (e.source for e in rows["test"] if e.kind == kind))
        total = sum(sizes.values())
        for name, n in sizes.items():  # each source gets its proportional share, within one
            assert abs(got[name] - 40 * n / total) < 1, (name, got, sizes)
    assert not {e.id for e in rows["test"]} & {e.id for e in rows["train"]}


def test_weights_and_caps(fx, tmp_path) -> None:
    base = _cfg(fx, instruction_fraction=1.0)
    names = [s.path for s in base.instruction]
    sources = [{"path": p} for p in names]
    sources[0]["weight"] = 2.0      # dolly: every row twice
    sources[1]["weight"] = 0.0      # alpaca: held-out only
    sources[2]["weight"] = 0.5      # sharegpt: a seeded half
    sources[3]["cap"] = 7           # self-instruct: at most 7
    rep, rows, _ = _run(tmp_path, _cfg(fx, instruction=sources, instruction_fraction=1.0))
    by = {s["name"]: s for s in rep.card["sources"]}
    pool = {n: by[n]["after_dedupe"] - by[n]["splits"]["test"] for n in by}
    train = Counter(e.source for e in rows["train"])
    assert train["dolly"] == 2 * pool["dolly"]
    assert "alpaca" not in train and by["alpaca"]["splits"]["test"] > 0
    assert train["sharegpt"] == round(0.5 * pool["sharegpt"])
    assert train["self_instruct"] == 7
    ids = Counter(e.id for e in rows["train"] if e.source == "dolly")
    assert set(ids.values()) == {2}
    assert len({e.id for e in rows["seen"]}) == len(rows["seen"])  # seen prompts are distinct examples


def test_ratio_and_size(fx, tmp_path) -> None:
    rep, rows, _ = _run(tmp_path, _cfg(fx, train_size=100, instruction_fraction=0.3))
    assert Counter(e.kind for e in rows["train"]) == {"instruction": 30, "grounded": 70}
    assert rep.card["splits"]["train"]["rows"] == 100


# --------------------------------------------------------------------------------- duplicates
def _ex(i: str, instruction: str, context: str | None = None, kind: str = "instruction") -> Example:
    return Example(id=i, source="u", kind=kind, instruction=instruction, response="r", context=context,
                   task="extractive" if context else "open")


def test_near_duplicates(tmp_path) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    article = " ".join(rng.choices(words, k=300))
    edited = article.split()
    edited[150] = "changed"
    other = " ".join(rng.choices(words, k=300))
    rows = [
        _ex("a", "Summarize the article.", article, "grounded"),
        _ex("b", "Summarize the article.", " ".join(edited), "grounded"),      # one word changed: near-duplicate
        _ex("c", "Summarize the article.", other, "grounded"),                 # same instruction, other article
        _ex("d", "Who is named in the article?", article, "grounded"),         # another question on the passage
        _ex("e", "SUMMARIZE   the article!", article, "grounded"),              # normalized duplicate of a
        _ex("f", "Summarize the article.", article, "grounded"),               # exact duplicate of a
        _ex("a", "A new prompt under a repeated id.", None),
    ]
    kept, bad = dedupe(rows, level="near")
    assert [e.id for e in kept] == ["a", "c", "d"]
    assert [(r.line, r.category) for r in bad] == [(2, "near-duplicate"), (5, "duplicate-normalized"),
                                                   (6, "duplicate-exact"), (7, "duplicate-id")]
    assert bad[0].reason.startswith("near-duplicate of 'a' (Jaccard 0.9")
    kept, bad = dedupe(rows, level="normalized")
    assert [e.id for e in kept] == ["a", "b", "c", "d"]
    kept, bad = dedupe(rows, level="exact")
    assert [e.id for e in kept] == ["a", "b", "c", "d", "e"]


def test_near_duplicate_decisions_are_exact_jaccard(tmp_path) -> None:
    """Candidates come from MinHash, decisions from the exact shingle sets: every pair the deduper
    drops is at or above the threshold, and a pair well above it is never missed."""
    rng = random.Random(1)
    words = [f"v{i}" for i in range(5000)]
    base = [" ".join(rng.choices(words, k=120)) for _ in range(60)]
    rows, expected = [], {}
    for i, text in enumerate(base):
        rows.append(_ex(f"o{i}", text))
        w = text.split()
        for j in rng.sample(range(len(w)), 2 if i % 2 else 25):  # 2 words: J ~0.95; 25 words: J ~0.5
            w[j] = f"x{j}"
        rows.append(_ex(f"e{i}", " ".join(w)))
        expected[f"e{i}"] = bool(i % 2)
    kept, bad = dedupe(rows, level="near", threshold=0.8)
    dropped = {json.loads(r.raw)["id"] for r in bad}
    assert dropped == {k for k, near in expected.items() if near}
    for r in bad:
        j = float(r.reason.split("Jaccard ")[1].split()[0])
        assert j >= 0.8


def test_mixer_quarantines_duplicates_with_their_file_and_line(fx, tmp_path) -> None:
    src = fx["nq_common"].path
    copy = tmp_path / "nq_again.jsonl"
    copy.write_text(src.read_text())
    cfg = _cfg(fx, instruction=[], grounded=[{"path": str(src)}, {"path": str(copy)}], instruction_fraction=0.0)
    rep, _, quarantine = _run(tmp_path, cfg)
    dups = [r for r in quarantine if r.category.startswith("duplicate")]
    kept_lines = [e.line for e in fx["nq_common"].expect if e.outcome == "kept"]
    assert [(r.file, r.line) for r in dups] == [(str(copy), ln) for ln in kept_lines]
    assert {r.source for r in dups} == {"nq_again"}
    assert rep.card["sources"][1]["duplicates"] == {"duplicate-exact": len(kept_lines)}


# ------------------------------------------------------------------------------------- the card
def test_the_card_counts_what_happened(fx, tmp_path) -> None:
    meter = whitespace_meter(max_length=300, max_prompt_length=200)
    rep, rows, quarantine = _run(tmp_path, _cfg(fx), meter)
    card = rep.card
    by = {s["name"]: s for s in card["sources"]}
    for name, key in [("dolly", "dolly"), ("alpaca", "alpaca"), ("sharegpt", "sharegpt"),
                      ("self_instruct", "self_instruct"), ("nq_simplified", "nq_simplified"),
                      ("cnn_dailymail", "cnn_csv")]:
        f, s = fx[key], by[name]
        assert s["format"] == f.format and s["rows"] == len(f.expect) and s["kept"] == f.kept_examples
        for outcome in ("excluded", "invalid", "too-large"):
            assert s["rejected"].get(outcome, 0) == f.count(outcome), (name, outcome)
        # the card's file record: the SHA-256 and size of the content read (a .gz file's, decompressed)
        raw = f.path.read_bytes()
        content = gzip.decompress(raw) if f.path.suffix == ".gz" else raw
        assert s["files"][0]["digest"] == hashlib.sha256(content).hexdigest(), name
        assert s["files"][0]["bytes"] == len(content), name
    # the quarantine file and the card agree, category by category
    assert Counter(r.category for r in quarantine) == card["quarantine"]["by_category"]
    assert card["quarantine"]["total"] == len(quarantine) == rep.stats["rejected"]
    # truncation: every row counted, against the limits, in the meter's unit
    for split, examples in rows.items():
        lengths = meter.measure(examples)
        assert card["splits"][split]["truncated_prompt"] == sum(p > 200 for p, _ in lengths)
        assert card["splits"][split]["truncated_sequence"] == sum(t > 300 for _, t in lengths)
    assert by["cnn_dailymail"]["truncated"]["prompt"] >= 1          # the very long article
    assert by["cnn_dailymail"]["lengths"]["prompt"]["max"] > 5000
    assert card["length_unit"] == "words"
    # the n-gram overlap of held-out and training prompts is reported
    assert card["overlap"]["heldout"] == len(rows["test"])
    md, html = to_markdown(card), to_html(card)
    for name in by:
        assert name in md and name in html
    metrics = flat_metrics(card)
    assert metrics["source.dolly.kept"] == fx["dolly"].kept_examples
    assert metrics["rejected.excluded"] == card["quarantine"]["by_category"]["excluded"]


def test_overlap_check_finds_planted_overlap() -> None:
    held = ["the quick brown fox jumps over the lazy dog near the river bank today",
            "completely unrelated words about cooking pasta with fresh basil and garlic tonight",
            "too short"]
    check = D.OverlapCheck(held, 8)
    check.add_train(["yesterday the quick brown fox jumps over the lazy dog near the old mill"])
    shares = check.shares()
    assert 0 < shares[0] < 1 and shares[1] == 0 and np.isnan(shares[2])
    check.add_train([held[0].upper()])  # case and punctuation do not hide an overlap
    assert check.shares()[0] == 1.0


def test_html_card_escapes_what_the_data_says(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [Example(id=f"i{i}", source="<script>alert(1)</script>", kind="instruction",
                               instruction=f"Say {i} things.", response="ok") for i in range(40)])
    rep, _, _ = _run(tmp_path, DataConfig(instruction=[{"path": str(path), "name": "<b>x</b>"}], grounded=[],
                                          instruction_fraction=1.0, eval_per_kind=2, seen_prompts_per_kind=2))
    html = to_html(rep.card)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


# ---------------------------------------------------------------------------------- the step
def test_the_mix_step_logs_sources_splits_and_the_card_to_mlflow(fx, tmp_path, cache_dir, tiny_model_dir) -> None:
    import mlflow

    from reset import steps

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = {"instruction": [{"path": str(fx["alpaca"].path)}], "grounded": [{"path": str(fx["nq_common"].path)}],
            "eval_per_kind": 5, "dev_per_kind": 3, "seen_prompts_per_kind": 5}
    out = {k: str(tmp_path / "out" / f"{k}.jsonl") for k in ("train", "dev", "test", "seen", "rejected")}
    cfg = steps.config(data=data, tracking={"tracking_uri": uri, "experiment": "mix-test"},
                       model={"base": "builtin:tiny-llama", "max_length": 64, "max_prompt_length": 48})
    stats = steps.mix(cfg, out_train=out["train"], out_dev=out["dev"], out_test=out["test"], out_seen=out["seen"],
                      out_rejected=out["rejected"], cache_dir=str(cache_dir),
                      out_card=str(tmp_path / "out" / "card.md"))
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mix-test").experiment_id])
    inputs = {(d.dataset.name, d.dataset.digest, d.dataset.source_type) for d in run.inputs.dataset_inputs}
    digests = {
        f.path.name: __import__("hashlib").sha256(f.path.read_bytes()).hexdigest()[:16]
        for f in (fx["alpaca"], fx["nq_common"])
    }
    assert ("alpaca", digests["alpaca.json"], "local") in inputs and ("nq", digests["nq.jsonl"], "local") in inputs
    assert {n for n, _, _ in inputs} >= {"train", "dev", "test", "seen_prompts"}
    # the test split's digest is the file's, recorded on the run
    test_digest = __import__("hashlib").sha256(Path(out["test"]).read_bytes()).hexdigest()
    assert run.data.tags["reset.test_digest"] == stats["test_digest"] == test_digest
    m = run.data.metrics
    assert m["train"] == stats["train"] and m["source.alpaca.kept"] == fx["alpaca"].kept_examples
    assert m["rejected.invalid"] == fx["alpaca"].count("invalid") + fx["nq_common"].count("invalid")
    assert m["truncated.train.sequence"] > 0  # at max_length 64 tokens most rows are cut
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "data_card")}
    assert arts == {"data_card/data_card.md", "data_card/data_card.html", "data_card/data_card.json"}
    card = Path(tmp_path / "out" / "card.md").read_text()
    assert "lengths in tokens" in card and "builtin:tiny-llama" in card


def test_the_step_counts_words_when_the_tokenizer_cannot_load(fx, tmp_path) -> None:
    from reset.config import ModelConfig
    from reset.models.tokenizers import length_meter

    meter = length_meter(ModelConfig(base=str(tmp_path / "no-such-model")))
    assert meter.unit == "words" and "could not be loaded" in meter.note and "no-such-model" in meter.note


def test_an_s3_model_lends_only_its_tokenizer(s3, tiny_model_dir, tmp_path) -> None:
    import uuid

    from reset.config import ModelConfig
    from reset.data import storage
    from reset.models.tokenizers import length_meter

    bucket = f"tok-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    storage.upload(tiny_model_dir, f"s3://{bucket}/tiny")
    cache = tmp_path / "cache"
    meter = length_meter(ModelConfig(base=f"s3://{bucket}/tiny", cache_dir=str(cache)))
    assert meter.unit == "tokens"
    fetched = {p.name for p in cache.rglob("*") if p.is_file()}
    assert "tokenizer.json" in fetched and not any(n.endswith(".safetensors") for n in fetched)  # no weights
    local = length_meter(ModelConfig(base=str(tiny_model_dir)))
    examples = [_ex("a", "Say something short."), _ex("b", "Who is named?", "Ann met Bob in Oslo.", "grounded")]
    assert meter.measure(examples) == local.measure(examples)
    p, t = local.measure(examples)[1]
    assert 0 < p < t and meter.overhead_bytes > 0


def test_builtin_sources_have_a_digest_and_a_code_source(tmp_path) -> None:
    from reset import tracking

    cfg = DataConfig(demo_size=40, eval_per_kind=4, seen_prompts_per_kind=4)
    rep, _, _ = _run(tmp_path, cfg)
    a = [s["files"] for s in rep.card["sources"]]
    rep2, _, _ = _run(tmp_path / "again", cfg)
    assert a == [s["files"] for s in rep2.card["sources"]] and all(len(f[0]["digest"]) == 64 for f in a)
    rep3, _, _ = _run(tmp_path / "other", DataConfig(demo_size=40, eval_per_kind=4, seen_prompts_per_kind=4, seed=1))
    assert a != [s["files"] for s in rep3.card["sources"]]  # another seed, other demo rows
    ds = tracking.dataset("builtin:demo-instruction", "demo-instruction", a[0][0]["digest"])
    assert ds.source._get_source_type() == "code" and ds.digest == a[0][0]["digest"][:16]


@pytest.mark.parametrize("system", ["", "You are terse."])
def test_token_lengths_are_what_training_and_generation_see(tiny_model_dir, demo, system: str) -> None:
    """The card's lengths equal the prompt ids generation builds and the SFT ids training builds."""
    from reset.config import ModelConfig
    from reset.models import chat
    from reset.models.loading import load_tokenizer
    from reset.models.tokenizers import length_meter

    tok = load_tokenizer(tiny_model_dir)
    meter = length_meter(ModelConfig(base=str(tiny_model_dir), system_prompt=system))
    examples = demo[0][:20] + demo[1][:20]
    for ex, (p, t) in zip(examples, meter.measure(examples), strict=True):
        ids, cut = chat.prompt_ids(tok, ex, 10_000, system)
        assert not cut and p == len(ids), ex.id
        sft, _ = chat.encode_sft(tok, ex, ex.response, 10_000, system)
        assert t == len(sft), ex.id


def test_near_dedupe_leaves_no_near_pair_behind_in_the_demo_set() -> None:
    """Recall on templated prompts: after near-dedupe, no two kept demo prompts are at or above
    the threshold (checked by brute force on the exact shingle sets), and each dropped one is."""
    from reset.data.demo import build_demo

    ifs, cds = build_demo(seed=0, n_instruction=300, n_grounded=300)
    kept, bad = dedupe(ifs + cds, level="near", threshold=0.8)
    assert bad and all(r.category == "near-duplicate" for r in bad)
    sets = [(D.shingle_set(e.instruction), D.shingle_set(e.context or "")) for e in kept]
    kinds = [e.kind for e in kept]
    for i in range(len(kept)):
        for j in range(i):
            if kinds[i] == kinds[j]:
                j_i, j_c = D.jaccard(sets[i][0], sets[j][0]), D.jaccard(sets[i][1], sets[j][1])
                assert min(j_i, j_c) < 0.8, (kept[i].id, kept[j].id)


def test_held_out_sizes_per_kind(fx, tmp_path) -> None:
    rep, rows, _ = _run(tmp_path, _cfg(fx, eval_instruction=30, eval_grounded=7))
    assert Counter(e.kind for e in rows["test"]) == {"instruction": 30, "grounded": 7}
    with pytest.raises(
        Exception,
        match=r"^data: 0 dev \+ 5000 test grounded examples requested \(data\.dev_per_kind, data\.eval_grounded\)",
    ):
        _run(tmp_path / "x", _cfg(fx, eval_grounded=5000))
