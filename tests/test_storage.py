"""Both object stores: round trips, all-or-nothing writes, multipart, presigned URLs, retries."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from loraflow.errors import InvalidRequestError, NotFoundError, StorageError
from loraflow.settings import Settings
from loraflow.storage import ObjectStore, get_store, open_store
from loraflow.storage.local import LocalStore
from tests.helpers import BreakingReader, FlakyProxy

MIB = 2**20


@pytest.fixture
def store(backend: str) -> ObjectStore:
    return get_store()


def test_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    data = b"prompt,response\nhi,hello\n"
    info = store.put("a/b/data.csv", data)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists("a/b/data.csv")
    assert store.get_bytes("a/b/data.csv") == data
    store.put("a/other", tmp_path.joinpath("x").write_bytes(b"1") and tmp_path / "x")
    assert [o.key for o in store.list("a/")] == ["a/b/data.csv", "a/other"]
    assert store.download("a/b/data.csv", tmp_path / "out.csv").read_bytes() == data
    assert store.delete("a/b/data.csv") is True
    assert store.delete("a/b/data.csv") is False
    assert not store.exists("a/b/data.csv")
    with pytest.raises(NotFoundError):
        store.get_bytes("a/b/data.csv")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/../b", "sp ace", ""])
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidRequestError):
        store.put(key, b"x")


def test_failed_upload_leaves_nothing(store: ObjectStore) -> None:
    with pytest.raises((OSError, StorageError)):
        store.put("broken", BreakingReader(size=3 * MIB, fail_after=2 * MIB))
    assert not store.exists("broken")
    assert list(store.list()) == []


def test_local_failed_upload_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(OSError):
        store.put("k", BreakingReader(size=3 * MIB, fail_after=MIB))
    assert list((tmp_path / "store").rglob("*")) == [tmp_path / "store" / ".partial"]


def test_local_url_is_a_file_url(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k.csv", b"abc")
    with urllib.request.urlopen(store.url("k.csv")) as resp:
        assert resp.read() == b"abc"


def s3_settings(bucket: str, endpoint: str, **extra: object) -> Settings:
    return Settings(
        storage_uri=f"s3://{bucket}/prefix",
        s3_endpoint_url=endpoint,
        multipart_threshold=5 * MIB,
        **extra,
    )


def test_s3_multipart_upload_streams_and_hashes(s3_bucket: str, moto_endpoint: str) -> None:
    store = open_store(s3_settings(s3_bucket, moto_endpoint))
    data = bytes(range(256)) * (12 * MIB // 256)
    info = store.put("big.bin", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    head = boto3.client("s3", endpoint_url=moto_endpoint).head_object(
        Bucket=s3_bucket, Key="prefix/big.bin"
    )
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"]  # the ETag of a multipart upload is "<md5>-<parts>"
    assert store.get_bytes("big.bin") == data


def test_s3_failed_multipart_upload_leaves_no_parts(s3_bucket: str, moto_endpoint: str) -> None:
    store = open_store(s3_settings(s3_bucket, moto_endpoint))
    with pytest.raises(StorageError, match="connection reset"):
        store.put("big.bin", BreakingReader(size=16 * MIB, fail_after=11 * MIB))
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    assert client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_s3_presigned_url_is_sigv4_for_an_hour(s3_bucket: str, moto_endpoint: str) -> None:
    store = open_store(s3_settings(s3_bucket, moto_endpoint))
    store.put("d.csv", b"prompt,response\n")
    url = store.url("d.csv")
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["3600"]
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == b"prompt,response\n"
    with pytest.raises(NotFoundError):
        store.url("missing.csv")


def test_s3_retries_throttling_and_server_errors(s3_bucket: str, moto_endpoint: str) -> None:
    with FlakyProxy(moto_endpoint, statuses=[503, 429, 500]) as proxy:
        store = open_store(s3_settings(s3_bucket, proxy.url))
        store.put("k", b"payload")
        assert store.get_bytes("k") == b"payload"
    assert proxy.requests == 5  # three refused, then the put and the get went through


def test_s3_gives_up_after_bounded_retries(s3_bucket: str, moto_endpoint: str) -> None:
    with FlakyProxy(moto_endpoint, statuses=[503] * 1000) as proxy:
        store = open_store(s3_settings(s3_bucket, proxy.url, s3_max_attempts=2, s3_retry_window=0))
        with pytest.raises(StorageError, match="SlowDown"):
            store.put("k", b"payload")
    assert proxy.requests < 10  # a few attempts of the put and of the cleanup, then it stops


def test_every_storage_scheme_settings_accept_has_a_store() -> None:
    from loraflow.settings import STORAGE_SCHEMES
    from loraflow.storage import STORES

    assert set(STORES) == set(STORAGE_SCHEMES)
