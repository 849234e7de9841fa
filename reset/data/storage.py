"""Where data and models live: local paths and s3:// URIs.

Credentials and the endpoint come from the environment only (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, or MLFLOW_S3_ENDPOINT_URL as used
by MLflow), never from pipeline parameters.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from reset.errors import DataError


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def s3_client():
    import boto3

    endpoint = (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
        or None
    )
    return boto3.client("s3", endpoint_url=endpoint)


def default_cache_dir() -> Path:
    root = os.environ.get("RESET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "reset-kfp"
    )
    return Path(root)


def not_regular(path: str | os.PathLike[str]) -> str:
    """What `path` is when it is neither a regular file nor a directory ("" otherwise): a device,
    a FIFO or a socket is never data (reading one may never end)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return ""


def fetch(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local path for `uri`: a local path as is, an s3:// object or prefix downloaded
    (once; re-downloaded when the object's ETag changes) under the cache dir."""
    if not is_s3(uri):
        p = Path(uri).expanduser()
        if not p.exists():
            raise DataError(f"{uri}: no such file or directory")
        if what := not_regular(p):
            raise DataError(f"{uri}: is {what}, not a data file or a directory of them")
        return p
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "s3"
    client = s3_client()
    try:
        keys = _list(client, bucket, key)
        if not keys:
            raise DataError(f"{uri}: no such object or prefix")
        if keys == [(key, keys[0][1])]:  # a single object
            etag = keys[0][1]
            dest = cache / bucket / _tag(key, etag) / Path(key).name
            if not dest.exists():
                _download(client, bucket, key, dest)
            return dest
        prefix = key.rstrip("/") + "/" if key else ""
        root = (
            cache / bucket / _tag(key, "|".join(f"{k}={e}" for k, e in keys)) / (Path(key.rstrip("/")).name or bucket)
        )
        for k, _ in keys:
            rel = k[len(prefix) :]
            if not rel or rel.endswith("/"):
                continue
            dest = root / rel
            if not dest.exists():
                _download(client, bucket, k, dest)
        return root
    except (BotoCoreError, ClientError) as exc:
        raise DataError(f"{uri}: cannot read from S3: {exc}") from None


def _tag(key: str, etag: str) -> str:
    return hashlib.sha256(f"{key}|{etag}".encode()).hexdigest()[:16]


def _list(client, bucket: str, key: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        for obj in page.get("Contents", []):
            k = obj["Key"]
            if k == key or not key or key.endswith("/") or k.startswith(key + "/"):
                out.append((k, obj.get("ETag", "")))
    return sorted(out)


def _download(client, bucket: str, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    client.download_file(bucket, key, str(tmp))
    os.replace(tmp, dest)


def upload(local: str | os.PathLike[str], uri: str) -> list[str]:
    """Upload a file or a directory tree to an s3:// URI; returns the keys written."""
    bucket, key = split_s3(uri)
    client = s3_client()
    local = Path(local)
    written = []
    if local.is_dir():
        for p in sorted(local.rglob("*")):
            if p.is_file():
                k = f"{key.rstrip('/')}/{p.relative_to(local).as_posix()}" if key else p.relative_to(local).as_posix()
                client.upload_file(str(p), bucket, k)
                written.append(k)
    else:
        client.upload_file(str(local), bucket, key)
        written.append(key)
    return written


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a local file's content (what data cards, splits and frozen sets are pinned by)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_local_store(uri: str) -> bool:
    """An MLflow tracking store on this machine's disk (empty: the default SQLite file, sqlite:,
    file:, a plain path): not one that pods on a cluster can share."""
    uri = uri.strip()
    return not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri
