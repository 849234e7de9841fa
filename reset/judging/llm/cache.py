"""SQLite cache of finished judgments, keyed by model, rubric version, axis and the full prompt."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence

from reset.judging.llm.prompts import Rubric


class JudgeCache:
    """SQLite cache of finished judgments; safe for threads (a lock) and processes (WAL + busy timeout)."""

    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, model TEXT, rubric TEXT, axis TEXT, "
                "raw_score REAL, rationale TEXT, created REAL)"
            )

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[float, str]]:
        out: dict[str, tuple[float, str]] = {}
        keys = list(keys)
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                rows = self._db.execute(
                    f"SELECT key, raw_score, rationale FROM judgments WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                out.update({k: (s, r) for k, s, r in rows})
        return out

    def put(self, key: str, model: str, rubric: str, axis: str, raw_score: float, rationale: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, rubric, axis, raw_score, rationale, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def cache_key(model: str, rubric: Rubric, axis: str, system: str, user: str) -> str:
    blob = json.dumps([model, rubric.id, rubric.version, axis, system, user], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()
