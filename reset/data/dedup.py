"""Deduplication and the train / held-out overlap check, over millions of rows in bounded memory.

A prompt is an example's instruction and context. `Deduper` keeps, per row, a few fixed-size
fingerprints (never the text) and decides at the end, first occurrence kept:

- id: a repeated id;
- exact: the same instruction and context, character for character;
- normalized: the same after Unicode NFKC, case folding, punctuation removed and whitespace
  collapsed;
- near: the Jaccard similarity of word 3-grams (of the normalized text, first 256 words) is at
  or above the threshold on the instruction and on the context both, against an earlier row.
  Requiring both keeps different questions about one passage (Natural Questions) and one
  instruction over different articles (CNN/DailyMail) apart. Candidates come from MinHash
  (one-permutation hashing: 32 bins per field, 16-bit values) banded for LSH (16 bands of 2 bins
  per field; a row is compared with the earliest row of each of its buckets), and each candidate
  pair is confirmed on the exact shingle sets, so a decision never rests on an estimate. Finding
  the pairs is approximate: a pair well above the threshold is found almost surely, one just at
  it usually (the demo set's four pairs at 0.80-0.87 all are; tests/test_mix_stream.py).

The exact and normalized fingerprints are Python's 64-bit hashes (only equality within one run is
asked of them). The MinHash word hashes are computed with numpy over whole batches of text
(polynomial hashes of the folded UTF-8 bytes, no per-word Python work), the same in every
process, so the candidates, and the result, do not depend on PYTHONHASHSEED.

`OverlapCheck` measures, for each held-out prompt, the share of its word n-grams that occur in
some training prompt (the usual contamination check), reported and never acted on.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

LEVELS = ("exact", "normalized", "near")
BINS = 32
BANDS = 16         # LSH bands per field, of ROWS_PER_BAND bins each (16 x 2: every bin in one band)
ROWS_PER_BAND = 2
EMPTY = np.uint16(0xFFFF)
SHINGLE = 3
MAX_WORDS = 256
BATCH = 1024

_PUNCT = str.maketrans(
    {c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00ab\u00bb\u00bf\u00a1"}
)
# bytes: ASCII punctuation, whitespace and NUL all become a space (the only word separator left)
_FOLD = bytes.maketrans(
    (string.punctuation + string.whitespace + "\x00").encode(),
    b" " * len(string.punctuation + string.whitespace + "\x00"),
)
_P = np.uint64(0x100000001B3)
_PINV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)


def fold(text: str) -> bytes:
    """A text's words, folded: NFKC and case folding (non-ASCII), ASCII lower case, punctuation
    and whitespace runs as separators. Words are `fold(text).split()`."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).casefold().translate(_PUNCT)
    return text.encode("utf-8", "surrogatepass").lower().translate(_FOLD)


def normalize(text: str) -> str:
    """The folded text with single spaces (what "normalized" duplicates compare)."""
    return b" ".join(fold(text).split()).decode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------- word hashing
class _Powers:
    """P^i and P^-i mod 2^64, grown on demand."""

    def __init__(self) -> None:
        self.pw = np.ones(1, np.uint64)
        self.ipw = np.ones(1, np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pw) < n + 1:
            size = max(n + 1, 2 * len(self.pw))
            with np.errstate(over="ignore"):
                pw = np.full(size, _P, np.uint64)
                pw[0] = 1
                ipw = np.full(size, _PINV, np.uint64)
                ipw[0] = 1
                self.pw, self.ipw = np.cumprod(pw, dtype=np.uint64), np.cumprod(ipw, dtype=np.uint64)
        return self.pw, self.ipw


_POWERS = _Powers()


def word_hashes(folded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash of each word, the index of its text, its position in the text) for folded texts
    (`fold`); one pass of numpy over the whole batch."""
    data = b"\x00".join(folded)
    b = np.frombuffer(data, np.uint8)
    n = len(b)
    if n == 0:
        z = np.zeros(0, np.int64)
        return np.zeros(0, np.uint64), z, z
    sep = (b == 32) | (b == 0)
    prev_sep = np.empty(n, bool)
    prev_sep[0] = True
    prev_sep[1:] = sep[:-1]
    next_sep = np.empty(n, bool)
    next_sep[-1] = True
    next_sep[:-1] = sep[1:]
    starts = np.flatnonzero(~sep & prev_sep)
    ends = np.flatnonzero(~sep & next_sep) + 1
    pw, ipw = _POWERS.get(n)
    with np.errstate(over="ignore"):
        pre = np.zeros(n + 1, np.uint64)
        np.cumsum((b.astype(np.uint64) + np.uint64(1)) * pw[:n], out=pre[1:])
        words = (pre[ends] - pre[starts]) * ipw[starts]
    owner = np.cumsum(b == 0)[starts].astype(np.int64)
    first = np.searchsorted(owner, np.arange(len(folded)))
    pos = np.arange(len(starts)) - first[owner] if len(starts) else np.zeros(0, np.int64)
    return words, owner, pos


def ngram_hashes(words: np.ndarray, owner: np.ndarray, n: int, *, short_whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word n-grams inside each text (never across two texts). With `short_whole`
    a text of fewer than n words gives one n-gram: all its words."""
    m = len(words) - n + 1
    with np.errstate(over="ignore"):
        if m > 0:
            h = words[:m] * _M1
            for k in range(1, n):
                h = (h ^ (h >> np.uint64(29))) * _M2 + words[k : m + k]
            same = owner[:m] == owner[n - 1 :]
            grams, gowner = h[same], owner[:m][same]
        else:
            grams, gowner = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        if short_whole and len(words):
            counts = np.bincount(owner)
            short = np.flatnonzero((counts > 0) & (counts < n))
            if len(short):
                pos = np.searchsorted(owner, short)
                acc = np.zeros(len(short), np.uint64)
                for k in range(n - 1):
                    valid = counts[short] > k
                    acc = np.where(
                        valid, (acc ^ (acc >> np.uint64(29))) * _M2 + words[np.minimum(pos + k, len(words) - 1)], acc
                    )
                grams = np.concatenate([grams, acc])
                gowner = np.concatenate([gowner, short.astype(np.int64)])
        grams = grams ^ (grams >> np.uint64(31))
        grams = grams * _M3
        grams = grams ^ (grams >> np.uint64(32))
    return grams, gowner


def minhash(words: np.ndarray, owner: np.ndarray, pos: np.ndarray, rows: int) -> np.ndarray:
    """One-permutation MinHash signatures (rows x BINS, uint16; EMPTY where a bin got no shingle)
    of the word 3-grams of each text's first MAX_WORDS words."""
    sig = np.full((rows, BINS), EMPTY, np.uint16)
    keep = pos < MAX_WORDS
    words, owner = words[keep], owner[keep]
    if not len(words):
        return sig
    grams, gowner = ngram_hashes(words, owner, SHINGLE, short_whole=True)
    bins = (grams >> np.uint64(64 - 5)).astype(np.int64)
    values = (grams & np.uint64(0xFFFE)).astype(np.uint16)  # never EMPTY (0xFFFF)
    np.minimum.at(sig, (gowner, bins), values)
    return sig


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of rows of two signature matrices (1.0 where both are empty)."""
    filled = (a != EMPTY) | (b != EMPTY)
    same = (a == b) & (a != EMPTY)
    n = filled.sum(axis=1)
    return np.where(n > 0, same.sum(axis=1) / np.maximum(n, 1), 1.0)


# -------------------------------------------------------------------------------- the deduper
class _Grow:
    """An append-only numpy array (amortized doubling)."""

    def __init__(self, dtype, width: int = 0):
        self.width = width
        self.data = np.zeros((1024, width) if width else 1024, dtype)
        self.n = 0

    def extend(self, values) -> None:
        values = np.asarray(values, self.data.dtype)
        k = len(values)
        if self.n + k > len(self.data):
            size = max(self.n + k, 2 * len(self.data))
            new = np.zeros((size, self.width) if self.width else size, self.data.dtype)
            new[: self.n] = self.data[: self.n]
            self.data = new
        self.data[self.n : self.n + k] = values
        self.n += k

    def view(self) -> np.ndarray:
        return self.data[: self.n]


DUP_NONE, DUP_ID, DUP_EXACT, DUP_NORMALIZED, DUP_NEAR = 0, 1, 2, 3, 4
DUP_NAMES = {
    DUP_ID: "duplicate-id",
    DUP_EXACT: "duplicate-exact",
    DUP_NORMALIZED: "duplicate-normalized",
    DUP_NEAR: "near-duplicate",
}


class Deduper:
    """Feed rows in order with `add`; `finish` says, per row, which earlier row it repeats."""

    def __init__(self, level: str = "near", threshold: float = 0.8):
        if level not in LEVELS:
            raise ValueError(f"dedupe level {level!r} is not one of {list(LEVELS)}")
        self.level, self.threshold = level, threshold
        self._id = _Grow(np.int64)
        self._exact = _Grow(np.int64)
        self._norm = _Grow(np.int64)
        self._sig_i = _Grow(np.uint16, BINS)
        self._sig_c = _Grow(np.uint16, BINS)
        self._pending: list[tuple[str, str]] = []
        self._buf: list[tuple[int, int, int]] = []

    def __len__(self) -> int:
        return self._id.n + len(self._buf)

    def add(self, id_: str, instruction: str, context: str | None) -> tuple[bytes, bytes] | None:
        """Add a row; returns its folded (instruction, context) where they were computed."""
        context = context or ""
        folded = None
        if self.level == "exact":
            self._buf.append((hash(id_), hash(instruction + "\x1f" + context), 0))
        else:
            folded = (fold(instruction), fold(context))
            # (Python's hash: equality within this process is all that is asked of these three)
            self._buf.append(
                (
                    hash(id_),
                    hash(instruction + "\x1f" + context),
                    hash(b" ".join(folded[0].split()) + b"\x1f" + b" ".join(folded[1].split())),
                )
            )
            if self.level == "near":
                self._pending.append(folded)
        if len(self._buf) >= BATCH:
            self._flush()
        return folded

    def _flush(self) -> None:
        if self._buf:
            ids, exact, norm = zip(*self._buf, strict=True)
            self._id.extend(ids)
            self._exact.extend(exact)
            self._norm.extend(norm)
            self._buf = []
        if self._pending:
            rows = len(self._pending)
            # one pass over instruction, context, instruction, context, ...: text 2i is row i's instruction
            words, owner, pos = word_hashes([t for pair in self._pending for t in pair])
            sig = minhash(words, owner, pos, 2 * rows)
            self._sig_i.extend(sig[0::2])
            self._sig_c.extend(sig[1::2])
            self._pending = []

    def finish(self, texts: TextsOf | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(of, why, score): for each row the index of the earlier row it repeats (-1: kept), the
        DUP_* code, and the Jaccard similarity of near-duplicates. `texts(rows)` gives the rows'
        (instruction, context), to confirm near-duplicate candidates exactly (needed at "near")."""
        self._flush()
        n = self._id.n
        of = np.full(n, -1, np.int64)
        why = np.zeros(n, np.uint8)
        score = np.zeros(n, np.float32)
        if n == 0:
            return of, why, score
        rows = np.arange(n)
        # a repeated prompt is named as such even when its id repeats too (ids made from the content)
        keys = [(DUP_EXACT, self._exact.view())]
        if self.level != "exact":
            keys.append((DUP_NORMALIZED, self._norm.view()))
        keys.append((DUP_ID, self._id.view()))
        for code, key in keys:
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            first_of = first[inverse]
            hit = (first_of != rows) & (of < 0)
            of[hit] = first_of[hit]
            why[hit] = code
        if self.level == "near":
            if texts is None:
                raise ValueError("near-duplicate detection needs the texts of its candidates")
            self._near(of, why, score, texts)
        return of, why, score

    def candidates(self, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, earlier row) pairs among `alive` that share an LSH bucket and whose estimated
        similarity is near the threshold on both fields."""
        si, sc = self._sig_i.view(), self._sig_c.view()  # indexed by row; only bands and candidates are copied
        idx = np.arange(len(alive))
        found_r: list[np.ndarray] = []
        found_l: list[np.ndarray] = []
        floor = self.threshold - MARGIN
        with np.errstate(over="ignore"):
            for sig in (si, sc):
                for band in range(BANDS):
                    part = sig[alive, band * ROWS_PER_BAND : (band + 1) * ROWS_PER_BAND].astype(np.uint64)
                    key = np.zeros(len(alive), np.uint64)
                    for j in range(ROWS_PER_BAND):
                        key = (key ^ (key >> np.uint64(29))) * _M1 + part[:, j]
                    # a band with no shingle says nothing: a key no other row has
                    key = np.where(
                        (part != 0xFFFF).any(axis=1), key >> np.uint64(1), np.uint64(1 << 63) | idx.astype(np.uint64)
                    )
                    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
                    leader = first[inverse]
                    cand = np.flatnonzero(leader != idx)
                    if not len(cand):
                        continue
                    lead = leader[cand]
                    a, b = alive[cand], alive[lead]
                    ok = (similarity(si[a], si[b]) >= floor) & (similarity(sc[a], sc[b]) >= floor)
                    found_r.append(cand[ok])
                    found_l.append(lead[ok])
        if not found_r:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pairs = np.unique(np.stack([np.concatenate(found_r), np.concatenate(found_l)], axis=1), axis=0)
        return alive[pairs[:, 0]], alive[pairs[:, 1]]

    def _near(self, of: np.ndarray, why: np.ndarray, score: np.ndarray, texts: TextsOf) -> None:
        alive = np.flatnonzero(of < 0)
        if len(alive) < 2:
            return
        rows, leads = self.candidates(alive)
        if not len(rows):
            return
        needed = np.unique(np.concatenate([rows, leads]))
        shingles = {
            int(r): (shingle_set(i), shingle_set(c or ""))
            for r, (i, c) in zip(needed, texts(needed.tolist()), strict=True)
        }
        for r, lead in zip(rows.tolist(), leads.tolist(), strict=True):  # sorted by row: earlier rows decide first
            if of[r] >= 0:
                continue
            a, b = shingles[r], shingles[lead]
            j = min(jaccard(a[0], b[0]), jaccard(a[1], b[1]))
            if j >= self.threshold:
                of[r], why[r], score[r] = lead, DUP_NEAR, j


TextsOf = Callable[[list[int]], list[tuple[str, str | None]]]
MARGIN = 0.2  # how far below the threshold an estimate may be and still be checked exactly


def shingle_set(text: str) -> set[tuple[bytes, ...]]:
    """The word 3-grams of a text's first MAX_WORDS folded words; a shorter text is one."""
    w = fold(text).split()[:MAX_WORDS]
    if len(w) < SHINGLE:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + SHINGLE]) for i in range(len(w) - SHINGLE + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# -------------------------------------------------------------------------------- the overlap
class OverlapCheck:
    """Share of each held-out prompt's word n-grams found in the training prompts. Texts are
    strings, or `fold`ed bytes (what the mixer keeps on disk for this)."""

    def __init__(self, heldout: Sequence[str | bytes], n: int):
        self.n = n
        self.size = len(heldout)
        words, owner, _ = word_hashes([t if isinstance(t, bytes) else fold(t) for t in heldout])
        grams, gowner = ngram_hashes(words, owner, n, short_whole=False)
        self.per_example = np.bincount(gowner, minlength=self.size)
        self.keys, inverse = np.unique(grams, return_inverse=True)
        self.gram_key, self.gram_owner = inverse, gowner
        self.found = np.zeros(len(self.keys), bool)
        # a 2^24-bit filter in front of the sorted keys: most training n-grams stop there
        self.bits = np.zeros(1 << 24, bool)
        self.bits[(self.keys & np.uint64((1 << 24) - 1)).astype(np.int64)] = True

    def add_train(self, texts: Sequence[str | bytes]) -> None:
        if not len(self.keys) or not texts:
            return
        words, owner, _ = word_hashes([t if isinstance(t, bytes) else fold(t) for t in texts])
        grams, _ = ngram_hashes(words, owner, self.n, short_whole=False)
        grams = grams[self.bits[(grams & np.uint64((1 << 24) - 1)).astype(np.int64)]]
        if not len(grams):
            return
        idx = np.searchsorted(self.keys, grams)
        idx = np.minimum(idx, len(self.keys) - 1)
        self.found[idx[self.keys[idx] == grams]] = True

    def shares(self) -> np.ndarray:
        """Per held-out prompt: the share of its n-grams seen in training (NaN: shorter than n words)."""
        hit = np.bincount(self.gram_owner, weights=self.found[self.gram_key].astype(float), minlength=self.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.per_example > 0, hit / np.maximum(self.per_example, 1), np.nan)
