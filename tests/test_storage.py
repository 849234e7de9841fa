"""Local paths and s3:// URIs against a real HTTP S3 endpoint (moto server): fetch once, re-fetch on
change, upload trees."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from reset.data import storage
from reset.data.records import DataError


@pytest.fixture
def bucket(s3) -> str:
    name = f"st-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """Keys downloaded by storage (the real download still happens)."""
    calls: list[str] = []
    real = storage._download

    def counting(client, bucket, key, dest):
        calls.append(key)
        return real(client, bucket, key, dest)

    monkeypatch.setattr(storage, "_download", counting)
    return calls


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_s3() -> None:
    assert storage.split_s3("s3://b/a/b/c.txt") == ("b", "a/b/c.txt")
    assert storage.split_s3("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="bucket"):
        storage.split_s3("s3:///key")
    with pytest.raises(ValueError, match="not an s3"):
        storage.split_s3("/tmp/x")


# ---------------------------------------------------------------------------------------- fetch
def test_fetch_single_object(s3, bucket, tmp_path, downloads) -> None:
    s3.put_object(Bucket=bucket, Key="data/a.jsonl", Body=b'{"x": 1}\n')
    s3.put_object(Bucket=bucket, Key="data/a.jsonl.bak", Body=b"old")  # shares the key as a prefix
    path = storage.fetch(f"s3://{bucket}/data/a.jsonl", tmp_path)
    assert path.is_file() and path.name == "a.jsonl"
    assert path.read_bytes() == b'{"x": 1}\n'
    assert path.is_relative_to(tmp_path)
    assert downloads == ["data/a.jsonl"]
    assert not list(tmp_path.rglob("*.part-*"))


def test_fetch_prefix_reproduces_the_tree(s3, bucket, tmp_path, downloads) -> None:
    tree = {"model/config.json": b"{}", "model/weights.bin": bytes(range(256)) * 8,
            "model/tok/vocab.txt": b"a\nb\n"}
    for k, v in tree.items():
        s3.put_object(Bucket=bucket, Key=k, Body=v)
    s3.put_object(Bucket=bucket, Key="model2/other.json", Body=b"not mine")  # sibling prefix
    expected = {k.removeprefix("model/"): v for k, v in tree.items()}
    root = storage.fetch(f"s3://{bucket}/model", tmp_path)
    assert root.is_dir() and root.name == "model"
    assert _files(root) == expected
    assert sorted(downloads) == sorted(tree)
    # a trailing slash names the same tree
    assert _files(storage.fetch(f"s3://{bucket}/model/", tmp_path)) == expected


def test_fetch_whole_bucket(s3, bucket, tmp_path) -> None:
    s3.put_object(Bucket=bucket, Key="x.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="d/y.txt", Body=b"y")
    root = storage.fetch(f"s3://{bucket}", tmp_path)
    assert root.name == bucket and _files(root) == {"x.txt": b"x", "d/y.txt": b"y"}


def test_second_fetch_does_not_download(s3, bucket, tmp_path, downloads) -> None:
    s3.put_object(Bucket=bucket, Key="one.txt", Body=b"1")
    s3.put_object(Bucket=bucket, Key="dir/a.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="dir/b.txt", Body=b"b")
    first = storage.fetch(f"s3://{bucket}/one.txt", tmp_path)
    root = storage.fetch(f"s3://{bucket}/dir", tmp_path)
    assert len(downloads) == 3
    mtime = first.stat().st_mtime_ns
    assert storage.fetch(f"s3://{bucket}/one.txt", tmp_path) == first
    assert storage.fetch(f"s3://{bucket}/dir", tmp_path) == root
    assert len(downloads) == 3
    assert first.stat().st_mtime_ns == mtime


def test_changed_object_is_downloaded_again(s3, bucket, tmp_path, downloads) -> None:
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"version 1")
    old = storage.fetch(f"s3://{bucket}/f.txt", tmp_path)
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"version 2")
    new = storage.fetch(f"s3://{bucket}/f.txt", tmp_path)
    assert new.read_bytes() == b"version 2"
    assert downloads == ["f.txt", "f.txt"]
    assert new != old and old.read_bytes() == b"version 1"  # an older copy is never overwritten in place


def test_changed_object_in_a_prefix_is_downloaded_again(s3, bucket, tmp_path) -> None:
    s3.put_object(Bucket=bucket, Key="m/a.txt", Body=b"a1")
    s3.put_object(Bucket=bucket, Key="m/b.txt", Body=b"b1")
    assert _files(storage.fetch(f"s3://{bucket}/m", tmp_path)) == {"a.txt": b"a1", "b.txt": b"b1"}
    s3.put_object(Bucket=bucket, Key="m/b.txt", Body=b"b2")
    assert _files(storage.fetch(f"s3://{bucket}/m", tmp_path)) == {"a.txt": b"a1", "b.txt": b"b2"}
    s3.delete_object(Bucket=bucket, Key="m/a.txt")
    assert _files(storage.fetch(f"s3://{bucket}/m", tmp_path)) == {"b.txt": b"b2"}


def test_renamed_object_in_a_prefix(s3, bucket, tmp_path) -> None:
    s3.put_object(Bucket=bucket, Key="m/old.txt", Body=b"same")
    storage.fetch(f"s3://{bucket}/m", tmp_path)
    s3.copy_object(Bucket=bucket, Key="m/new.txt", CopySource={"Bucket": bucket, "Key": "m/old.txt"})
    s3.delete_object(Bucket=bucket, Key="m/old.txt")
    assert _files(storage.fetch(f"s3://{bucket}/m", tmp_path)) == {"new.txt": b"same"}


def test_missing_object_names_the_uri(s3, bucket, tmp_path) -> None:
    s3.put_object(Bucket=bucket, Key="present.txt", Body=b"x")
    uri = f"s3://{bucket}/absent.txt"
    with pytest.raises(DataError, match="no such object") as err:
        storage.fetch(uri, tmp_path)
    assert uri in str(err.value)
    # "pres" is a prefix of a key but neither an object nor a folder
    with pytest.raises(DataError, match="no such object"):
        storage.fetch(f"s3://{bucket}/pres", tmp_path)


def test_missing_bucket_names_the_uri(s3, tmp_path) -> None:
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/k.txt"
    with pytest.raises(DataError) as err:
        storage.fetch(uri, tmp_path)
    assert str(err.value).startswith(uri)


def test_default_cache_dir_from_environment(s3, bucket, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RESET_CACHE_DIR", str(tmp_path / "envcache"))
    s3.put_object(Bucket=bucket, Key="k.txt", Body=b"k")
    path = storage.fetch(f"s3://{bucket}/k.txt")
    assert path.is_relative_to(tmp_path / "envcache" / "s3") and path.read_bytes() == b"k"


# --------------------------------------------------------------------------------------- upload
def test_upload_directory(s3, bucket, tmp_path) -> None:
    src = tmp_path / "out"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    (src / "sub" / "deeper" / "c.txt").write_text("c")
    (src / "empty").mkdir()
    keys = storage.upload(src, f"s3://{bucket}/runs/1/")
    expected = ["runs/1/a.json", "runs/1/sub/b.bin", "runs/1/sub/deeper/c.txt"]
    assert sorted(keys) == expected
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == expected
    assert s3.get_object(Bucket=bucket, Key="runs/1/sub/b.bin")["Body"].read() == b"\x00\x01"
    # a round trip through fetch gives the same files back
    assert _files(storage.fetch(f"s3://{bucket}/runs/1", tmp_path / "cache")) == _files(src)


def test_upload_directory_to_bucket_root_and_single_file(s3, bucket, tmp_path) -> None:
    src = tmp_path / "d"
    src.mkdir()
    (src / "x.txt").write_text("x")
    assert storage.upload(src, f"s3://{bucket}") == ["x.txt"]
    assert storage.upload(src / "x.txt", f"s3://{bucket}/named/y.txt") == ["named/y.txt"]
    assert s3.get_object(Bucket=bucket, Key="named/y.txt")["Body"].read() == b"x"


# ---------------------------------------------------------------------------------------- local
def test_local_paths_pass_through(tmp_path) -> None:
    f = tmp_path / "data.jsonl"
    f.write_text("{}\n")
    assert storage.fetch(str(f)) == f
    assert storage.fetch(str(tmp_path)) == tmp_path
    assert f.read_text() == "{}\n"


def test_missing_local_path(tmp_path) -> None:
    missing = tmp_path / "nope" / "x.jsonl"
    with pytest.raises(DataError) as err:
        storage.fetch(str(missing))
    assert str(err.value).startswith(str(missing)) and "no such file" in str(err.value)
