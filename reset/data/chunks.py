"""Mid-step resume: a step's results written in chunks as they are produced, keyed by a
fingerprint of the step's inputs, so that a rerun (a local `run --resume`, a KFP retry) continues
after the last complete chunk and writes exactly what an uninterrupted run writes.

    with chunks.session("generate", log) as resume:         # the root from RESUME_ENV (None: off)
        store = resume.store({"model": ..., "prompts": ..., "decoding": ...})
        for name in my_chunks:
            if name in store.done:
                rows = store.read(name)                      # finished by an earlier attempt
            else:
                rows = compute(name)
                store.write(name, rows)                      # complete once renamed into place
        write_jsonl(out, everything)
    # the session ended without an error: its stores are removed

Layout: `<root>/<step>/<fingerprint[:20]>/` holds `inputs.json` (the fingerprint and what it was
made of, as short digests), a `lock` held by the process writing there, and one `<chunk>.jsonl`
per complete chunk (written to a temporary name and renamed: a chunk file that exists is
complete). Anything that was written for other inputs of the same step is never resumed onto: the
session says which inputs changed and removes it (unless its writer still holds its lock).

Where the root is: `RESUME_ENV` in the task's environment: the run folder's `resume/` in a local
run (pipelines/local_runs.py), the run's volume on a cluster (pipelines/cluster.py); unset, a step
runs without a store (a step called alone from Python).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

RESUME_ENV = "RESET_RESUME_DIR"
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")
SMALL_FILE = 64 * 1024 * 1024  # files up to this size are hashed whole; larger ones by size, head and tail


def digest(value: Any) -> str:
    """SHA-256 of a JSON-able value (keys sorted): what a chunk store's inputs are compared by."""
    blob = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def path_digest(path: str | os.PathLike[str]) -> str:
    """A fingerprint of a file or directory's content (names, sizes; small files whole, large ones
    by their first and last MiB): a model checkpoint or a data file. A reference that is not a
    local path (builtin:, s3://) is its own fingerprint."""
    p = Path(path)
    if not p.exists():
        return digest(str(path))
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(p) if f != p else f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= SMALL_FILE:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read(1 << 20))
    return h.hexdigest()


class ChunkStore:
    """One step's chunks for one set of inputs (see the module's docstring)."""

    def __init__(self, folder: Path, inputs: Mapping[str, str], lock_fh) -> None:
        self.dir, self.inputs, self._lock = folder, dict(inputs), lock_fh
        self.done: set[str] = {p.name[: -len(".jsonl")] for p in folder.glob("*.jsonl")}
        self.resumed = len(self.done)  # chunks an earlier attempt finished
        self.written = 0

    def path(self, name: str) -> Path:
        return self.dir / f"{_SAFE.sub('_', name)}.jsonl"

    def read(self, name: str) -> list[dict[str, Any]]:
        with open(self.path(name), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def write(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write chunk `name` whole: a temporary file, flushed to disk, renamed into place."""
        write_chunk(self.path(name), rows)
        self.done.add(name)
        self.written += 1

    def close(self, remove: bool) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)


def write_chunk(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """The chunk file format (also written by the vLLM worker, which imports nothing of ours): one
    JSON object per line, written under a temporary name and renamed, so an existing file is whole."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Resume:
    """The chunk stores of one step's attempt (`session`); `root` None: no store (nothing is kept)."""

    def __init__(self, root: Path | None, step: str, log: Callable[[str], None] = print) -> None:
        self.root, self.step, self.log = root, step, log
        self.stores: list[ChunkStore] = []

    def store(self, inputs: Mapping[str, Any], what: str = "") -> ChunkStore:
        """The store for these inputs (each value a JSON-able value or a digest): the one an earlier
        attempt left when its inputs were the same, else a new one; stores of other inputs of this
        step are removed, saying which inputs changed. `what` names the store in the log."""
        parts = {k: v if isinstance(v, str) and len(v) == 64 else digest(v) for k, v in inputs.items()}
        fp = digest(parts)
        label = f"[{self.step}]" + (f" {what}:" if what else "")
        if self.root is None:
            folder = _private_dir(self.step)
            store = ChunkStore(folder, parts, None)
            self.stores.append(store)
            return store
        step_dir = self.root / _SAFE.sub("_", self.step)
        step_dir.mkdir(parents=True, exist_ok=True)
        folder = step_dir / fp[:20]
        for other in sorted(p for p in step_dir.iterdir() if p.is_dir() and p != folder):
            self._drop_other(other, parts, label)
        folder.mkdir(exist_ok=True)
        lock = open(folder / "lock", "a+")  # noqa: SIM115 - held for the store's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            self.log(f"{label} another process is writing the chunks at {folder}: this attempt keeps its own")
            store = ChunkStore(_private_dir(self.step), parts, None)
            self.stores.append(store)
            return store
        meta = folder / "inputs.json"
        if meta.exists():
            try:
                same = json.loads(meta.read_text(encoding="utf-8")).get("fingerprint") == fp
            except (OSError, ValueError):
                same = False
            if not same:  # a truncated or foreign folder: start it afresh
                for f in folder.glob("*.jsonl"):
                    f.unlink()
        write_chunk(meta, [{"fingerprint": fp, "inputs": parts}])
        store = ChunkStore(folder, parts, lock)
        if store.done:
            self.log(f"{label} resuming: {store.resumed} chunk(s) finished by an earlier attempt are reused "
                     f"(skipped), from {folder}")
        self.stores.append(store)
        return store

    def _drop_other(self, other: Path, parts: Mapping[str, str], label: str) -> None:
        """Chunks an attempt wrote for other inputs: never resumed onto; removed (unless in use)."""
        try:
            with open(other / "lock", "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # in use by a live writer: leave it
                try:
                    old = json.loads((other / "inputs.json").read_text(encoding="utf-8").splitlines()[0])
                    changed = sorted(k for k in set(parts) | set(old.get("inputs", {}))
                                     if old.get("inputs", {}).get(k) != parts.get(k))
                except (OSError, ValueError, IndexError):
                    changed = ["(unreadable)"]
                n = len(list(other.glob("*.jsonl")))
                if n:
                    self.log(f"{label} not resuming the {n} chunk(s) at {other}: they were written for other "
                             f"inputs (changed: {', '.join(changed)}); starting afresh")
                shutil.rmtree(other, ignore_errors=True)
        except OSError:
            return

    def finish(self) -> None:
        """The step wrote its outputs: its stores are no longer needed."""
        for s in self.stores:
            s.close(remove=True)
        self.stores.clear()

    def abandon(self) -> None:
        """The step failed or was stopped: keep what was written, for the next attempt."""
        for s in self.stores:
            s.close(remove=s._lock is None)  # a private store (no root) cannot be resumed anyway
        self.stores.clear()


def _private_dir(step: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"reset-chunks-{_SAFE.sub('_', step)}-"))


def root_from_env() -> Path | None:
    value = os.environ.get(RESUME_ENV, "").strip()
    return Path(value) if value else None


@contextlib.contextmanager
def session(step: str, log: Callable[[str], None] = print, root: str | os.PathLike[str] | None = None,
            ) -> Iterator[Resume]:
    """The chunk stores of one attempt of `step` (its name as it runs: generate-2of4): removed when
    the block ends normally, kept for the next attempt when it raises (killed, failed)."""
    resume = Resume(Path(root) if root else root_from_env(), step, log)
    try:
        yield resume
    except BaseException:
        resume.abandon()
        raise
    resume.finish()


def chunk_of(position: int, size: int) -> int:
    """The chunk a prompt at `position` (within the step's prompts) belongs to: `size` per chunk."""
    return position // max(1, size)
