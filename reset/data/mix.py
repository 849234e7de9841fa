"""Mixing: instruction-following (IF) and context-grounded (CD) sources into a training mixture, a
held-out split and the pool of seen prompts that self-instruct generation samples from.

The recipe, in order (every random choice from one generator seeded with data.seed):

1. read each source (`reset.data.sources`: any published format, local / s3:// / hf://);
   rows that are not kept go to the quarantine with file, line and reason;
2. deduplicate prompts across all sources, first occurrence kept (`reset.data.dedup`: repeated
   ids, exact, normalized and near-duplicate prompts, as data.dedupe says);
3. hold out, per kind, `dev_instruction` / `dev_grounded` (default `dev_per_kind`) dev examples
   and `eval_instruction` / `eval_grounded` (default `eval_per_kind`) test examples, stratified by
   source and task (each (source, task) stratum gets its proportional share, largest remainders
   first). Test comes from the kind's `split: test` sources when it has any (read after every
   pool source, so a test prompt that repeats a pool prompt is dropped; drawn with a generator of
   its own, so the rest of the plan does not depend on the test sources), else from the pool
   after dev;
4. weight each source's remaining rows (`weight`: 0.5 a seeded half, 2 each row twice; `cap`
   at most so many), then trim each kind uniformly to the IF:CD ratio and data.train_size;
5. sample the seen prompts from the distinct training examples, per kind;
6. report: counts, lengths and truncation in tokens, the train / held-out n-gram overlap
   (`reset.data.card`).

`mix_to_files` streams: each kept example is written once to a spool file beside the outputs as
it is read, and only fixed-size per-row facts stay in memory (kind, task, source, origin,
fingerprints); the outputs are then copied out of the spool. A million rows take a few hundred
MB (docs/bench.md). `mix` does the same over lists, for small data and tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reset.config import DataConfig, DataSource
from reset.data import dedup
from reset.data.card import LengthMeter, Reservoir, now, percentiles, utf8_len
from reset.data.records import DataError, Example, QuarantineWriter, Rejected, to_row
from reset.data.sources import BUILTINS, SourceReader, SourceReport, source_name
from reset.data.sources import load as load_rows

__all__ = ["BUILTINS", "MixResult", "Mixer", "MixReport", "Origins", "dedupe", "load_source", "mix", "mix_to_files"]

_ENCODE = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
KINDS = ("instruction", "grounded")
TASKS = ("open", "extractive", "abstractive")
TRUNC_PROMPT, TRUNC_SEQ = 1, 2
RAW_CHARS = 20_000


SPLITS = ("train", "dev", "test", "seen")


@dataclass
class MixResult:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    seen: list[Example]
    rejected: list[Rejected]
    stats: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)


Origins = dict[int, tuple[str, int]]  # id(example) -> (source path or URI, 1-based line)


# ---------------------------------------------------------------------------------- list helpers
def load_source(src: DataSource, slot: str, cfg: DataConfig, cache_dir: str = "",
                origins: Origins | None = None) -> tuple[list[Example], list[Rejected]]:
    """Read one source for `slot` ("instruction" or "grounded") into lists: (kept, rejected).

    Fails (DataError naming the source) when its invalid rows exceed data.max_bad_fraction or
    none is usable. `origins`, when given, receives where each kept example came from, so later
    rejections (duplicates) can name the file and line."""
    kept_rows, bad, _ = load_rows(src, slot, cfg, cache_dir)
    kept = []
    for ex, file, line in kept_rows:
        kept.append(ex)
        if origins is not None:
            origins[id(ex)] = (file, line)
    return kept, bad


def dedupe(examples: Sequence[Example], origins: Origins | None = None, level: str = "normalized",
           threshold: float = 0.8) -> tuple[list[Example], list[Rejected]]:
    """Drop repeated ids and repeated prompts (see reset.data.dedup for the levels); each dropped
    row is returned as rejected, naming the row it repeats. A row is located by `origins` (file
    and line, from load_source) or else by its source and position."""
    d = dedup.Deduper(level, threshold)
    for ex in examples:
        d.add(ex.id, ex.instruction, ex.context)
    of, why, score = d.finish(lambda idx: [(examples[i].instruction, examples[i].context) for i in idx])
    kept, bad = [], []
    for i, ex in enumerate(examples):
        if of[i] < 0:
            kept.append(ex)
            continue
        where, line = (origins or {}).get(id(ex), (ex.source, i + 1))
        reason = _dup_reason(int(why[i]), ex, examples[int(of[i])], float(score[i]))
        bad.append(Rejected(where, line, reason, _raw(ex), dedup.DUP_NAMES[int(why[i])], ex.source))
    return kept, bad


def _dup_reason(code: int, ex: Example, first: Example, score: float) -> str:
    if code == dedup.DUP_ID:
        return f"duplicate id {ex.id!r}"
    if code == dedup.DUP_NEAR:
        return f"near-duplicate of {first.id!r} (Jaccard {score:.2f} of word 3-grams)"
    return f"duplicate prompt of {first.id!r}"


def _raw(ex: Example) -> str:
    text = json.dumps(to_row(ex), ensure_ascii=False)
    return text if len(text) <= RAW_CHARS else f"{text[:RAW_CHARS]} ...[cut: {len(text):,} characters in all]"


# -------------------------------------------------------------------------------------- stores
class _ListStore:
    def __init__(self) -> None:
        self.rows: list[Example] = []

    def add(self, ex: Example) -> None:
        self.rows.append(ex)

    def get(self, idx: Sequence[int]) -> list[Example]:
        return [self.rows[i] for i in idx]

    def close(self) -> None:
        pass


class _SpoolStore:
    """Kept examples as JSON lines in a temp file; offsets in memory."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix=".mix-spool-", suffix=".jsonl", dir=directory)
        self._w = os.fdopen(fd, "wb", buffering=1 << 20)
        self._off = dedup._Grow(np.int64)
        self._pend: list[int] = []
        self._pos = 0
        self._r = None
        self._f = None

    def add(self, ex: Example) -> None:
        line = (_ENCODE(to_row(ex)) + "\n").encode("utf-8", "surrogatepass")
        self._pend.append(self._pos)
        self._pos += len(line)
        self._w.write(line)
        if len(self._pend) >= 4096:
            self._off.extend(self._pend)
            self._pend = []

    def _reader(self):
        if self._pend:
            self._off.extend(self._pend)
            self._pend = []
        if self._r is None:
            self._w.flush()
            self._r = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            self._offsets = np.append(self._off.view(), self._pos)
        return self._r

    def add_folded(self, folded: bytes) -> None:
        if self._f is None:
            self._f = open(self.path + ".prompts", "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._f.write(folded + b"\n")

    def folded(self, wanted: np.ndarray) -> Iterator[tuple[int, bytes]]:
        """(row, folded prompt) of each row where `wanted` is true, in row order (one sequential read)."""
        self._f.flush()
        with open(self.path + ".prompts", "rb") as fh:
            for i, line in enumerate(fh):
                if wanted[i]:
                    yield i, line[:-1]

    def line(self, i: int) -> bytes:
        r = self._reader()
        r.seek(int(self._offsets[i]))
        return r.read(int(self._offsets[i + 1] - self._offsets[i]))

    def get(self, idx: Sequence[int]) -> list[Example]:
        return [Example(**json.loads(self.line(int(i)))) for i in idx]

    def close(self) -> None:
        self._w.close()
        for fh in (self._r, self._f):
            if fh is not None:
                fh.close()
        for path in (self.path, self.path + ".prompts"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# -------------------------------------------------------------------------------------- the mixer
@dataclass
class _Source:
    name: str
    slot: str
    weight: float = 1.0
    cap: int = 0
    report: SourceReport | None = None
    test: bool = False  # a `split: test` source: its rows feed only the test split


class Mixer:
    """Rows in (`read` a configured source, or `add` examples), then `finish` (dedupe, split,
    mixture, seen prompts), then `write` or `examples`. `quarantine` receives every row that is
    not kept, as it happens."""

    def __init__(self, cfg: DataConfig, *, quarantine: QuarantineWriter | None = None,
                 meter: LengthMeter | None = None, spool_dir: str | None = None):
        self.cfg = cfg
        self.quarantine = quarantine or QuarantineWriter(None)
        self.meter = meter
        self.store: _ListStore | _SpoolStore = _SpoolStore(spool_dir) if spool_dir else _ListStore()
        self._spooled = isinstance(self.store, _SpoolStore)
        self.dedup = dedup.Deduper(cfg.dedupe, cfg.near_duplicate_threshold)
        self.sources: list[_Source] = []
        self._by_name: dict[str, int] = {}
        self.files: list[str] = []
        self._file_ids: dict[str, int] = {}
        self._cols: list[list[int]] = [[], [], [], [], []]  # kind, task, src, file, line
        self._arr = [dedup._Grow(t) for t in (np.uint8, np.uint8, np.uint16, np.uint32, np.int64)]
        self._flag_pending: list[tuple[int, Example]] = []
        self._flag_vals: dict[int, int] = {}
        self._samples: dict[int, Reservoir] = {}
        self.n = 0
        self.plan: dict[str, np.ndarray] = {}
        self.stats: dict[str, Any] = {}
        self.dups: dict[str, int] = {}
        self.notes: list[str] = []
        self.digests: dict[str, str] = {}  # split -> sha256 of its file, once written

    # ----------------------------------------------------------------------------------- in
    def source_index(self, name: str, slot: str = "", weight: float = 1.0, cap: int = 0, test: bool = False) -> int:
        if name not in self._by_name:
            self._by_name[name] = len(self.sources)
            self.sources.append(_Source(name, slot, weight, cap, test=test))
        return self._by_name[name]

    def read(self, src: DataSource, slot: str, cache_dir: str = "") -> SourceReport:
        """Read one configured source into the mixer (rows not kept go to the quarantine)."""
        name = source_name(src)
        if name in self._by_name:  # two sources with one name: tell them apart
            name = f"{name}-{len(self.sources) + 1}"
        si = self.source_index(name, slot, src.weight, src.cap, test=src.split == "test")
        reader = SourceReader(
            src if src.name == name else src.model_copy(update={"name": name}), slot, self.cfg, cache_dir
        )
        self.sources[si].report = reader.report
        add, qadd = self.add, self.quarantine.add
        try:
            for item in reader:
                if isinstance(item, Rejected):
                    qadd(item)
                else:
                    add(item[0], si, item[1], item[2])
        finally:
            self.sources[si].report = reader.report
        return reader.report

    def add(self, ex: Example, src: int, file: str, line: int) -> None:
        fid = self._file_ids.get(file)
        if fid is None:
            fid = self._file_ids[file] = len(self.files)
            self.files.append(file)
        c = self._cols
        c[0].append(0 if ex.kind == "instruction" else 1)
        c[1].append(TASKS.index(ex.task))
        c[2].append(src)
        c[3].append(fid)
        c[4].append(line)
        if len(c[0]) >= 4096:
            self._flush()
        self.store.add(ex)
        folded = self.dedup.add(ex.id, ex.instruction, ex.context)
        if self._spooled:  # the folded prompt, for the overlap check at the end (no JSON to parse then)
            if folded is None:
                folded = (dedup.fold(ex.instruction), dedup.fold(ex.context or ""))
            self.store.add_folded(folded[0] + b" " + folded[1])
        m = self.meter
        if m is not None:
            if m.could_exceed(utf8_len(ex.instruction) + utf8_len(ex.context), utf8_len(ex.response)):
                self._flag_pending.append((self.n, ex))
                if len(self._flag_pending) >= 256:
                    self._measure()
            res = self._samples.get(src)
            if res is None:
                res = self._samples[src] = Reservoir(self.cfg.card_sample, self.cfg.seed + src)
            res.add(ex)
        self.n += 1

    def _flush(self) -> None:
        for col, arr in zip(self._cols, self._arr, strict=True):
            arr.extend(col)
            col.clear()

    def _measure(self) -> None:
        if not self._flag_pending:
            return
        m = self.meter
        lengths = m.measure([ex for _, ex in self._flag_pending])
        for (i, _), (p, t) in zip(self._flag_pending, lengths, strict=True):
            f = (TRUNC_PROMPT if m.max_prompt_length and p > m.max_prompt_length else 0) | (
                TRUNC_SEQ if m.max_length and t > m.max_length else 0
            )
            if f:
                self._flag_vals[i] = f
        self._flag_pending = []

    # --------------------------------------------------------------------------------- finish
    def finish(self, split: bool = True) -> None:
        """Deduplicate; with `split`, choose the held-out, training and seen rows."""
        self._flush()
        self._measure()
        self.kind, self.task, self.src, self.file, self.line = (a.view() for a in self._arr)
        self.flag = np.zeros(self.n, np.uint8)
        for i, f in self._flag_vals.items():
            self.flag[i] = f
        of, why, score = self.dedup.finish(lambda idx: [(e.instruction, e.context) for e in self.store.get(idx)])
        self.dup_of, self.dup_why = of, why
        self._quarantine_duplicates(of, why, score)
        alive = np.flatnonzero(of < 0)
        self.alive = alive
        if split:
            self.plan = self._plan(alive)

    def _quarantine_duplicates(self, of: np.ndarray, why: np.ndarray, score: np.ndarray) -> None:
        dups = np.flatnonzero(of >= 0)
        for code, name in dedup.DUP_NAMES.items():
            k = int((why == code).sum())
            if k:
                self.dups[name] = k
        for start in range(0, len(dups), 4096):
            chunk = dups[start : start + 4096]
            rows = self.store.get(chunk.tolist())
            firsts = self.store.get(of[chunk].tolist())
            for i, ex, first in zip(chunk.tolist(), rows, firsts, strict=True):
                code = int(why[i])
                self.quarantine.add(
                    Rejected(
                        self.files[self.file[i]],
                        int(self.line[i]),
                        _dup_reason(code, ex, first, float(score[i])),
                        _raw(ex),
                        dedup.DUP_NAMES[code],
                        self.sources[self.src[i]].name,
                    )
                )

    def _plan(self, alive: np.ndarray) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        test_rng = np.random.default_rng([cfg.seed, 7])  # test from test sources: a generator of its own
        is_test_src = np.array([s.test for s in self.sources] or [False], bool)
        from_test = is_test_src[self.src[alive]]
        kind = self.kind[alive]
        devs: list[np.ndarray] = []
        tests: list[np.ndarray] = []
        pools: dict[int, list[np.ndarray]] = {0: [], 1: []}
        valid = {}
        for k in (0, 1):
            rows = alive[(kind == k) & ~from_test]
            test_rows = alive[(kind == k) & from_test]
            has_test_src = any(s.test and s.slot == KINDS[k] for s in self.sources) or len(test_rows) > 0
            valid[k] = len(rows) + len(test_rows)
            n_dev, n_test = cfg.dev_count(KINDS[k]), cfg.eval_count(KINDS[k])
            carve = 0 if has_test_src else n_test
            if not len(rows) and not len(test_rows):
                continue
            if len(rows) <= n_dev + carve:
                raise DataError(
                    f"data: {n_dev} dev {'' if has_test_src else f'+ {n_test} test '}{KINDS[k]} examples requested "
                    f"({self._size_keys(k, has_test_src)}) but only {len(rows)} valid {KINDS[k]} examples are in the "
                    "pool (training needs at least one more)"
                )
            if has_test_src:
                if len(test_rows) < n_test:
                    raise DataError(
                        f"data.{self._test_key(k)}: {n_test} test {KINDS[k]} examples requested but the `split: test` "
                        f"sources hold only {len(test_rows)} valid ones that repeat no pool prompt"
                    )
                tests.append(self._stratified(test_rows, n_test, test_rng))
            strata = self.src[rows].astype(np.int64) * 8 + self.task[rows]
            keys, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
            alloc_dev = _allocate(sizes, n_dev) if n_dev else np.zeros(len(sizes), np.int64)
            alloc_test = _allocate(sizes - alloc_dev, carve) if carve else np.zeros(len(sizes), np.int64)
            for j in range(len(keys)):
                members = rng.permutation(rows[inverse == j])
                a, b = alloc_dev[j], alloc_dev[j] + alloc_test[j]
                devs.append(members[:a])
                tests.append(members[a:b])
                pools[k].append(members[b:])
        train_pool: dict[int, np.ndarray] = {}
        for k in (0, 1):
            rest = np.concatenate(pools[k]) if pools[k] else np.zeros(0, np.int64)
            parts = []
            for s in np.unique(self.src[rest]) if len(rest) else []:
                info = self.sources[int(s)]
                own = rng.permutation(rest[self.src[rest] == s])
                whole, frac = int(info.weight), info.weight - int(info.weight)
                take = np.concatenate([own] * whole + [own[: int(round(frac * len(own)))]])
                if info.cap and len(take) > info.cap:
                    take = rng.permutation(take)[: info.cap]
                parts.append(take)
            train_pool[k] = rng.permutation(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        n_if, n_cd = _mixture_counts(len(train_pool[0]), len(train_pool[1]), cfg)
        train = np.concatenate([train_pool[0][:n_if], train_pool[1][:n_cd]]).astype(np.int64)
        if not len(train):
            raise DataError(
                "data: the training mixture is empty (check the sources, their weights and instruction_fraction)"
            )
        train = rng.permutation(train)
        seen = []
        for k in (0, 1):
            distinct = np.unique(train[self.kind[train] == k])
            if len(distinct):
                seen.append(rng.choice(distinct, size=min(cfg.seen_prompts_per_kind, len(distinct)), replace=False))

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

        dev_idx, test_idx, seen_idx = cat(devs), cat(tests), cat(seen)
        self.stats = {
            "valid_instruction": valid[0],
            "valid_grounded": valid[1],
            "train_instruction": int(n_if),
            "train_grounded": int(n_cd),
            "train": int(len(train)),
            "dev": int(len(dev_idx)),
            "test": int(len(test_idx)),
            "seen_prompts": int(len(seen_idx)),
            "rejected": int(self.quarantine.total),
        }
        return {"train": train, "dev": dev_idx, "test": test_idx, "seen": seen_idx}

    def _stratified(self, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` of `rows`, stratified by source and task (proportional shares, largest remainders)."""
        strata = self.src[rows].astype(np.int64) * 8 + self.task[rows]
        keys, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
        alloc = _allocate(sizes, n) if n < len(rows) else sizes
        return np.concatenate([rng.permutation(rows[inverse == j])[: alloc[j]] for j in range(len(keys))])

    def _test_key(self, k: int) -> str:
        cfg = self.cfg
        return f"eval_{KINDS[k]}" if cfg.eval_count(KINDS[k]) != cfg.eval_per_kind else "eval_per_kind"

    def _size_keys(self, k: int, has_test_src: bool) -> str:
        cfg = self.cfg
        dev = f"dev_{KINDS[k]}" if cfg.dev_count(KINDS[k]) != cfg.dev_per_kind else "dev_per_kind"
        return f"data.{dev}" + ("" if has_test_src else f", data.{self._test_key(k)}")

    # ---------------------------------------------------------------------------------- out
    def examples(self, which: str) -> list[Example]:
        return self.store.get(self.plan[which].tolist())

    def write(self, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Write the splits ({"train": path, ...}) as JSONL, atomically; returns rows and digest each."""
        out = {}
        for which, path in paths.items():
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            h = hashlib.sha256()
            with open(tmp, "wb", buffering=1 << 20) as fh:
                for line in self._lines(self.plan[which]):
                    h.update(line)
                    fh.write(line)
            os.replace(tmp, path)
            out[which] = {"path": path, "rows": int(len(self.plan[which])), "digest": h.hexdigest()}
            self.digests[which] = h.hexdigest()
        return out

    def _lines(self, idx: np.ndarray) -> Iterator[bytes]:
        if isinstance(self.store, _SpoolStore):
            for i in idx.tolist():
                yield self.store.line(i)
        else:
            for ex in self.store.get(idx.tolist()):
                yield (json.dumps(to_row(ex), ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")

    def overlap(self, which: str = "test") -> dict[str, Any] | None:
        """The n-gram overlap of the `which` split's prompts with the distinct training prompts."""
        if not self.plan or not len(self.plan[which]):
            return None
        eval_idx = self.plan[which]
        heldout = self.store.get(eval_idx.tolist())
        distinct = np.unique(self.plan["train"])
        if self._spooled:
            wanted = np.zeros(self.n, bool)
            wanted[eval_idx] = True
            folded = dict(self.store.folded(wanted))
            check = dedup.OverlapCheck([folded[int(i)] for i in eval_idx], self.cfg.overlap_ngram)
            wanted[:] = False
            wanted[distinct] = True
            batch: list[bytes] = []
            for _, text in self.store.folded(wanted):
                batch.append(text)
                if len(batch) >= dedup.BATCH:
                    check.add_train(batch)
                    batch = []
            check.add_train(batch)
        else:
            check = dedup.OverlapCheck([_prompt(e) for e in heldout], self.cfg.overlap_ngram)
            for start in range(0, len(distinct), 4096):
                check.add_train([_prompt(e) for e in self.store.get(distinct[start : start + 4096].tolist())])
        shares = check.shares()
        ok = ~np.isnan(shares)
        order = np.argsort(-np.where(ok, shares, -1.0), kind="stable")
        worst = [{"id": heldout[i].id, "share": float(shares[i])} for i in order[:5] if ok[i] and shares[i] > 0]
        return {
            "n": self.cfg.overlap_ngram,
            "split": which,
            "heldout": len(heldout),
            "measurable": int(ok.sum()),
            "any": int((shares[ok] > 0).sum()),
            "half": int((shares[ok] >= 0.5).sum()),
            "mean_share": round(float(shares[ok].mean()), 4) if ok.any() else 0.0,
            "worst": worst,
        }

    def close(self) -> None:
        self.store.close()

    # --------------------------------------------------------------------------------- card
    def card(self, title: str = "", overlap: dict[str, Any] | None = None) -> dict[str, Any]:
        m = self.meter
        alive = np.zeros(self.n, bool)
        alive[self.alive] = True
        srcs = []
        for si, s in enumerate(self.sources):
            rep = s.report
            mine = self.src == si
            kinds: dict[str, int] = {}
            for k in (0, 1):
                for t in range(len(TASKS)):
                    c = int((mine & alive & (self.kind == k) & (self.task == t)).sum())
                    if c:
                        kinds[f"{KINDS[k]}/{TASKS[t]}"] = c
            dups = {name: int((mine & (self.dup_why == code)).sum()) for code, name in dedup.DUP_NAMES.items()}
            entry: dict[str, Any] = {
                "name": s.name,
                "slot": s.slot or (rep.slot if rep else ""),
                "path": rep.path if rep else "",
                "format": rep.format if rep else "",
                "files": rep.files if rep else [],
                "rows": rep.rows if rep else int(mine.sum()),
                "kept": rep.kept if rep else int(mine.sum()),
                "moved": rep.moved if rep else 0,
                "rejected": dict(rep.rejected) if rep else {},
                "duplicates": {k: v for k, v in dups.items() if v},
                "after_dedupe": int((mine & alive).sum()),
                "kinds": kinds,
                "weight": s.weight,
                "cap": s.cap,
                "truncated": {
                    "prompt": int(((self.flag & TRUNC_PROMPT) > 0)[mine & alive].sum()),
                    "sequence": int(((self.flag & TRUNC_SEQ) > 0)[mine & alive].sum()),
                },
            }
            if rep:
                entry["unknown_fields"] = dict(rep.unknown_fields)
                entry["notes"] = dict(rep.notes)
            if self.plan:
                entry["splits"] = {w: int((self.src[self.plan[w]] == si).sum()) for w in SPLITS}
            entry["split"] = "test" if s.test else "pool"
            sample = self._samples.get(si)
            if m is not None and sample is not None and sample.items:
                lengths = m.measure(sample.items)
                entry["lengths"] = {
                    "prompt": percentiles([p for p, _ in lengths]),
                    "total": percentiles([t for _, t in lengths]),
                }
            srcs.append(entry)
        splits = {}
        for w, idx in self.plan.items():
            codes, counts = np.unique(self.kind[idx].astype(np.int64) * 8 + self.task[idx], return_counts=True)
            kt = {
                f"{KINDS[c // 8]}/{TASKS[c % 8]}": int(n) for c, n in zip(codes.tolist(), counts.tolist(), strict=True)
            }
            by_src = {
                self.sources[s].name: int(c) for s, c in zip(*np.unique(self.src[idx], return_counts=True), strict=True)
            }
            splits[w] = {
                "rows": int(len(idx)),
                "unique": int(len(np.unique(idx))),
                "by_kind_task": kt,
                "digest": self.digests.get(w, ""),
                "by_source": by_src,
                "truncated_prompt": int(((self.flag[idx] & TRUNC_PROMPT) > 0).sum()),
                "truncated_sequence": int(((self.flag[idx] & TRUNC_SEQ) > 0).sum()),
            }
        q = self.quarantine
        excluded: dict[str, int] = {}
        notes = list(self.notes)
        for s in self.sources:
            if s.report:
                for r, c in s.report.reasons.items():
                    excluded[r] = excluded.get(r, 0) + c
                notes += s.report.messages
                for what, c in s.report.notes.items():
                    notes.append(f"{s.name}: {what}: {c}")
                if s.report.unknown_fields:
                    where = {"meta": "kept under meta.extra_fields", "ignore": "ignored", "reject": "rows rejected"}[
                        self.cfg.unknown_fields
                    ]
                    notes.append(
                        f"{s.name}: fields the format does not know ({where}): "
                        + ", ".join(f"{k} ({c} rows)" for k, c in sorted(s.report.unknown_fields.items()))
                    )
                if s.report.stopped_at_limit:
                    notes.append(f"{s.name}: reading stopped at its limit of {s.report.kept} usable rows")
        return {
            "title": title,
            "generated": now(),
            "seed": self.cfg.seed,
            "length_unit": m.unit if m else "",
            "length_note": m.note if m else "",
            "limits": {"max_length": m.max_length if m else 0, "max_prompt_length": m.max_prompt_length if m else 0},
            "card_sample": self.cfg.card_sample,
            "recipe": {
                k: getattr(self.cfg, k)
                for k in (
                    "instruction_fraction",
                    "train_size",
                    "eval_per_kind",
                    "eval_instruction",
                    "eval_grounded",
                    "dev_per_kind",
                    "dev_instruction",
                    "dev_grounded",
                    "seen_prompts_per_kind",
                    "dedupe",
                    "near_duplicate_threshold",
                    "max_bad_fraction",
                    "unknown_fields",
                )
            },
            "sources": srcs,
            "splits": splits,
            "dedupe": dict(self.dups),
            "quarantine": {
                "total": q.total,
                "by_category": dict(q.by_category),
                "excluded_reasons": excluded,
                "first": [str(r) for r in q.first[:10]],
            },
            "overlap": overlap,
            "stats": dict(self.stats),
            "notes": notes,
        }


def _prompt(ex: Example) -> str:
    return f"{ex.instruction} {ex.context}" if ex.context else ex.instruction


def _allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """`total` split over strata proportionally to `sizes` (largest remainders; ties to the
    earlier stratum). Every share is at most its stratum's size since total < sum(sizes)."""
    quota = sizes * (total / sizes.sum())
    base = np.floor(quota).astype(np.int64)
    rest = total - int(base.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(sizes)), -(quota - base)))
        base[order[:rest]] += 1
    return np.minimum(base, sizes)


def _mixture_counts(avail_if: int, avail_cd: int, cfg: DataConfig) -> tuple[int, int]:
    f = cfg.instruction_fraction
    if cfg.train_size:
        want_if = round(cfg.train_size * f)
        want_cd = cfg.train_size - want_if
        if want_if > avail_if or want_cd > avail_cd:
            raise DataError(
                f"data.train_size: {cfg.train_size} at instruction_fraction {f:g} needs {want_if} instruction and "
                f"{want_cd} grounded training examples; only {avail_if} and {avail_cd} are available"
            )
        return want_if, want_cd
    # As many as the ratio allows.
    if f == 1.0:
        return avail_if, 0
    if f == 0.0:
        return 0, avail_cd
    total = min(avail_if / f, avail_cd / (1 - f))
    return min(avail_if, int(total * f + 1e-9)), min(avail_cd, int(total * (1 - f) + 1e-9))


# ------------------------------------------------------------------------------------ entry points
def mix(
    instruction: Sequence[Example],
    grounded: Sequence[Example],
    cfg: DataConfig,
    origins: Origins | None = None,
    meter: LengthMeter | None = None,
) -> MixResult:
    """Mix lists of examples (already read): dedupe, split, mixture, seen prompts. Each example's
    source is its `source` field (weight 1); `rejected` holds the duplicates."""
    q = QuarantineWriter(None, keep=None)
    mixer = Mixer(cfg, quarantine=q, meter=meter)
    mixer.notes.append("mixed from lists: per-source weights and caps do not apply")
    for ex in list(instruction) + list(grounded):
        si = mixer.source_index(ex.source)
        file, line = (origins or {}).get(id(ex), (ex.source, mixer.n + 1))
        mixer.add(ex, si, file, line)
    mixer.finish()
    return MixResult(
        train=mixer.examples("train"),
        dev=mixer.examples("dev"),
        test=mixer.examples("test"),
        seen=mixer.examples("seen"),
        rejected=list(q.first),
        stats=mixer.stats,
        card=mixer.card(overlap=mixer.overlap()),
    )


@dataclass
class MixReport:
    stats: dict[str, Any]
    card: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    sources: list[SourceReport]
    quarantine: QuarantineWriter


def mix_to_files(
    cfg: DataConfig,
    *,
    out_train: str,
    out_dev: str,
    out_test: str,
    out_seen: str,
    out_rejected: str,
    meter: LengthMeter | None = None,
    cache_dir: str = "",
    title: str = "",
) -> MixReport:
    """The mix step's work, streamed: read every configured source (the pool sources first, then
    the `split: test` ones), mix, write the four splits (train, dev, test, seen prompts) and the
    quarantine (JSONL), and build the data card (with each split's digest). Peak memory does not
    grow with row size."""
    q = QuarantineWriter(out_rejected)
    mixer = Mixer(cfg, quarantine=q, meter=meter, spool_dir=os.path.dirname(os.path.abspath(out_train)))
    try:
        for split in ("pool", "test"):
            for slot in KINDS:
                for src in getattr(cfg, slot):
                    if src.split == split:
                        mixer.read(src, slot, cache_dir)
        mixer.finish()
        outputs = mixer.write({"train": out_train, "dev": out_dev, "test": out_test, "seen": out_seen})
        card = mixer.card(title=title, overlap=mixer.overlap())
        q.close()
        mixer.stats["rejected"] = q.total
        card["stats"] = dict(mixer.stats)
        card["outputs"] = outputs
        return MixReport(dict(mixer.stats), card, outputs, [s.report for s in mixer.sources if s.report], q)
    except BaseException:
        q.abort()
        raise
    finally:
        mixer.close()
