"""Splitting a step's prompts into shards (one task each, run in parallel) and putting the pieces
back in order.

    lo, hi = bounds(len(examples), shard, shards)   # contiguous: shard k takes examples[lo:hi]
    ordered(records, examples, key)                 # records in the examples' order, then by id

Contiguous pieces keep every example's position in the whole set (generation derives each
request's seed from it), so the merged output of the shards is the unsharded step's output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def bounds(n: int, shard: int, shards: int) -> tuple[int, int]:
    """[lo, hi) of shard `shard` (0-based) of `shards` over n items: sizes differ by at most one."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    base, extra = divmod(n, shards)
    lo = shard * base + min(shard, extra)
    return lo, lo + base + (1 if shard < extra else 0)


def ordered(records: Iterable[T], example_ids: Sequence[str], example_of: Callable[[T], str],
            record_id: Callable[[T], Any]) -> list[T]:
    """`records` sorted by their example's position in `example_ids`, then by `record_id`; a record
    of an example that is not there, or the same record twice (a shard gathered twice), is an error."""
    pos = {e: i for i, e in enumerate(example_ids)}
    out, seen = [], set()
    for r in records:
        ex, rid = example_of(r), record_id(r)
        if ex not in pos:
            raise ValueError(f"record {rid!r} belongs to example {ex!r}, which is not in the prompt set")
        if rid in seen:
            raise ValueError(f"record {rid!r} appears in more than one shard")
        seen.add(rid)
        out.append(r)
    return sorted(out, key=lambda r: (pos[example_of(r)], record_id(r)))
