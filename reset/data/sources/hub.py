"""Hugging Face Hub datasets: `hf://datasets/<owner>/<name>[@<revision>][/<path in the repo>]`.

The dataset repository's data files (Parquet, JSON, JSONL, CSV; under the path when one is given)
are downloaded once into the cache with `huggingface_hub.snapshot_download` and read like a local
directory, through the same readers and format modules as a local or s3:// source. This needs a
cluster that can reach the hub (or a mirror set in HF_ENDPOINT; a token, where the dataset needs
one, comes from HF_TOKEN in the environment, never from the config). With HF_HUB_OFFLINE=1 or no
network it fails with a message naming the URI. Not exercised against the real hub here: this
machine has no hub access."""

from __future__ import annotations

import os
from pathlib import Path

from reset.errors import DataError

PREFIX = "hf://datasets/"
PATTERNS = ("*.parquet", "*.jsonl", "*.jsonl.gz", "*.json", "*.json.gz", "*.csv", "*.csv.gz", "*.tsv")


def is_hub(uri: str) -> bool:
    return uri.startswith(PREFIX)


def parse(uri: str) -> tuple[str, str | None, str]:
    """(repo id, revision or None, path inside the repo)."""
    rest = uri[len(PREFIX):].strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise DataError(f"{uri}: expected hf://datasets/<owner>/<name>[@<revision>][/<path>]")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def fetch(uri: str, cache_dir: str | os.PathLike[str]) -> Path:
    repo, revision, sub = parse(uri)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise DataError(f"{uri}: huggingface_hub is not installed") from None
    patterns = [f"{sub.rstrip('/')}/**/{p}" for p in PATTERNS] + [f"{sub.rstrip('/')}/{p}" for p in PATTERNS] \
        if sub and not sub.endswith(PATTERNS) else ([sub] if sub else list(PATTERNS) + [f"**/{p}" for p in PATTERNS])
    try:
        root = Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                      cache_dir=str(Path(cache_dir) / "hf")))
    except Exception as exc:  # noqa: BLE001 - offline, no network, no such repo, no access: one message
        raise DataError(f"{uri}: cannot read from the Hugging Face hub: {type(exc).__name__}: {exc}") from None
    target = root / sub if sub else root
    if not target.exists():
        raise DataError(f"{uri}: no data files at {sub!r} in {repo}")
    return target
