"""Data loading and mixing: instruction-following (IF) and context-grounded (CD) sets mixed by a
configurable ratio, seeded and deduplicated, with a held-out evaluation split and the pool of seen
prompts that self-instruct generation samples from.

Nothing is dropped silently: invalid rows, IF rows that carry a context (the paper removes them),
duplicates and id clashes all go to the quarantine with their reason.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.config import DataConfig, DataSource
from reset.data import storage
from reset.data.demo import build_demo
from reset.data.records import DataError, Example, Rejected, read_jsonl_numbered

BUILTINS = ("builtin:demo-instruction", "builtin:demo-grounded")


@dataclass
class MixResult:
    train: list[Example]
    eval: list[Example]
    seen: list[Example]
    rejected: list[Rejected]
    stats: dict[str, Any] = field(default_factory=dict)


Origins = dict[int, tuple[str, int]]  # id(example) -> (source path or URI, 1-based line)


def load_source(src: DataSource, slot: str, cfg: DataConfig, cache_dir: str = "",
                origins: Origins | None = None) -> tuple[list[Example], list[Rejected]]:
    """Read one source for `slot` ("instruction" or "grounded"); rows of the wrong kind are rejected.

    Fails (DataError naming the source) when the rejected rows, invalid or of the wrong kind,
    exceed `data.max_bad_fraction` of the file. `origins`, when given, receives where each kept
    example came from, so later rejections (duplicates) can name the file and line."""
    if src.path.startswith("builtin:"):
        if src.path not in BUILTINS:
            raise DataError(f"data.{slot}: unknown builtin dataset {src.path!r}; known: {list(BUILTINS)}")
        ifs, cds = build_demo(seed=cfg.seed, n_instruction=cfg.demo_size, n_grounded=cfg.demo_size)
        rows = list(enumerate(ifs if src.path.endswith("instruction") else cds, start=1))
        bad: list[Rejected] = []
    else:
        local = storage.fetch(src.path, cache_dir or None)
        if local.is_dir():
            raise DataError(f"{src.path}: is a directory; give a JSONL file")
        try:  # the share of bad rows is checked below, together with the slot checks
            rows, bad = read_jsonl_numbered(local, Example, max_bad_fraction=1.0)
        except DataError as exc:  # name the user's path or URI, not the download cache
            raise DataError(str(exc).replace(str(local), src.path)) from None
        bad = [Rejected(src.path, r.line, r.reason, r.raw) for r in bad]
    total = len(rows) + len(bad)
    kept: list[Example] = []
    for i, ex in rows:
        if ex.kind != slot:
            bad.append(_reject(src.path, i, ex, f"kind {ex.kind!r} given in the data.{slot} slot"))
        elif slot == "instruction" and ex.has_context:
            bad.append(_reject(src.path, i, ex, "instruction-following example carries a context (removed, as in the paper)"))
        else:
            kept.append(ex)
            if origins is not None:
                origins[id(ex)] = (src.path, i)
    if bad and len(bad) / total > cfg.max_bad_fraction:
        first = "; ".join(f"line {r.line}: {r.reason}" for r in bad[:3])
        raise DataError(f"{src.path}: {len(bad)} of {total} rows rejected, more than data.max_bad_fraction "
                        f"{cfg.max_bad_fraction:g}: {first}")
    if not kept:
        raise DataError(f"{src.path}: no usable {slot} rows ({len(bad)} rejected): " + bad[0].reason)
    if src.limit:
        kept = kept[: src.limit]
    return kept, bad


def _reject(path: str, line: int, ex: Example, reason: str) -> Rejected:
    import json
    from dataclasses import asdict

    return Rejected(path, line, reason, json.dumps(asdict(ex), ensure_ascii=False))


def _fingerprint(ex: Example) -> str:
    text = " ".join(ex.instruction.lower().split()) + "\x00" + " ".join((ex.context or "").lower().split())
    return hashlib.sha256(text.encode()).hexdigest()


def dedupe(examples: Sequence[Example], origins: Origins | None = None) -> tuple[list[Example], list[Rejected]]:
    """Drop repeated prompts (same instruction and context, whitespace and case folded) and
    repeated ids; each dropped row is returned as rejected, naming the row it repeats. A row is
    located by `origins` (file and line, from load_source) or else by its source and position."""
    seen_fp: dict[str, str] = {}
    seen_id: set[str] = set()
    kept, bad = [], []
    for i, ex in enumerate(examples, start=1):
        fp = _fingerprint(ex)
        where, line = (origins or {}).get(id(ex), (ex.source, i))
        if ex.id in seen_id:
            bad.append(_reject(where, line, ex, f"duplicate id {ex.id!r}"))
        elif fp in seen_fp:
            bad.append(_reject(where, line, ex, f"duplicate prompt of {seen_fp[fp]!r}"))
        else:
            seen_fp[fp] = ex.id
            seen_id.add(ex.id)
            kept.append(ex)
    return kept, bad


def mix(instruction: Sequence[Example], grounded: Sequence[Example], cfg: DataConfig,
        origins: Origins | None = None) -> MixResult:
    """Split each kind into held-out eval and train pools, mix the train pools by
    `instruction_fraction`, and sample the seen-prompt pool from the mixture."""
    rng = random.Random(cfg.seed)
    pools: dict[str, list[Example]] = {}
    rejected: list[Rejected] = []
    all_rows, bad = dedupe(list(instruction) + list(grounded), origins)
    rejected += bad
    for kind in ("instruction", "grounded"):
        rows = [e for e in all_rows if e.kind == kind]
        rng.shuffle(rows)
        pools[kind] = rows

    evals: list[Example] = []
    train_pool: dict[str, list[Example]] = {}
    for kind, rows in pools.items():
        if not rows:
            train_pool[kind] = []
            continue
        if len(rows) <= cfg.eval_per_kind:
            raise DataError(
                f"data.eval_per_kind: {cfg.eval_per_kind} held-out {kind} examples requested but only "
                f"{len(rows)} valid {kind} examples exist (training needs at least one more)"
            )
        evals += rows[: cfg.eval_per_kind]
        train_pool[kind] = rows[cfg.eval_per_kind :]

    n_if, n_cd = _mixture_counts(len(train_pool["instruction"]), len(train_pool["grounded"]), cfg)
    train = train_pool["instruction"][:n_if] + train_pool["grounded"][:n_cd]
    if not train:
        raise DataError("data: the training mixture is empty (check the sources and instruction_fraction)")
    rng.shuffle(train)

    seen: list[Example] = []
    for kind in ("instruction", "grounded"):
        rows = [e for e in train if e.kind == kind]
        seen += rng.sample(rows, min(cfg.seen_prompts_per_kind, len(rows)))

    stats = {
        "valid_instruction": len(pools["instruction"]),
        "valid_grounded": len(pools["grounded"]),
        "train_instruction": n_if,
        "train_grounded": n_cd,
        "train": len(train),
        "eval": len(evals),
        "seen_prompts": len(seen),
        "rejected": len(rejected),
    }
    return MixResult(train=train, eval=evals, seen=seen, rejected=rejected, stats=stats)


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
