"""Storage faults leave nothing behind and short outages fail nothing: uploads, downloads and
checkpoint writes ride out an outage and resume; what a failed upload left is swept at the
next start, and the bucket gets a rule that drops unfinished multipart uploads by itself."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from loraflow.errors import NotFoundError, StorageError
from loraflow.files import FileRepository, housekeeping
from loraflow.storage import get_store
from loraflow.storage.s3 import CLEANUP_RULE
from loraflow.training.checkpoints import CheckpointStore
from loraflow.training.loop import Trainer
from tests.helpers import csv_rows, write
from tests.reliability.proxy import CuttableProxy
from tests.training.conftest import RecordingReporter, tiny_plan  # noqa: F401  (a fixture)

pytestmark = pytest.mark.reliability


class MetadataWriteFails:
    """The store with storage gone right after the content was written (loraflow's seam):
    the metadata write fails, and so does the clean-up of the content."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        self.store, self.down = store, False

    def put(self, key: str, source):  # type: ignore[no-untyped-def]
        if key.endswith("meta.json"):
            self.down = True
        if self.down:
            raise StorageError(f"upload to {self.store.uri}{key} failed: connection refused")
        return self.store.put(key, source)

    def delete(self, key: str) -> bool:
        if self.down:
            raise StorageError("connection refused")
        return self.store.delete(key)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)


def test_a_failed_upload_is_invisible_and_swept_at_the_next_start(
    tmp_path: Path, use_s3: str
) -> None:
    repository = FileRepository.from_settings()
    kept = repository.upload(write(tmp_path, "kept.csv", csv_rows(3))).id
    broken = FileRepository(
        MetadataWriteFails(repository.store), repository.validation, repository.work_dir
    )
    with pytest.raises(StorageError, match="connection refused"):
        broken.upload(write(tmp_path, "lost.csv", csv_rows(3, start=5)))
    left = [o.key for o in get_store().list("files/") if not o.key.startswith(f"files/{kept}/")]
    assert left, "the failure left nothing: nothing to sweep"
    assert [r.id for r in repository.list()] == [kept]  # never visible
    assert repository.sweep() == []  # young leftovers may still be uploading: kept for now
    assert sorted(repository.sweep(older_than=timedelta(0))) == sorted(left)
    assert [o.key.split("/")[1] for o in get_store().list("files/")] == [kept] * 4


def test_unfinished_multipart_uploads_are_aborted_and_a_lifecycle_rule_added(
    use_s3: str, s3_bucket: str, moto_endpoint: str
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    user_rule = {"ID": "theirs", "Filter": {"Prefix": "other/"}, "Status": "Enabled",
                 "Expiration": {"Days": 30}}  # fmt: skip
    s3.put_bucket_lifecycle_configuration(
        Bucket=s3_bucket, LifecycleConfiguration={"Rules": [user_rule]}
    )
    key = "datasets/files/file-abcdefgh12345678/content"
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=s3_bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")

    # moto dates every multipart upload 2010-11-10, so it is old enough to go at once
    assert housekeeping() == ["files/file-abcdefgh12345678/content"]
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    rules = s3.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    assert {r["ID"] for r in rules} == {"theirs", CLEANUP_RULE}
    ours = next(r for r in rules if r["ID"] == CLEANUP_RULE)
    assert ours["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert get_store().ensure_cleanup_rule()  # idempotent
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]) == 2


@pytest.fixture
def cuttable_s3(
    s3_bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CuttableProxy]:
    """loraflow's store on the moto bucket, reached through a proxy a test can cut."""
    from loraflow import settings as settings_module

    proxy = CuttableProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", f"s3://{s3_bucket}/datasets")
    monkeypatch.setenv("LORAFLOW_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("LORAFLOW_MULTIPART_THRESHOLD", str(5 * 2**20))
    monkeypatch.setenv("LORAFLOW_S3_MAX_ATTEMPTS", "2")
    settings_module.reset()
    yield proxy
    proxy.close()


def upload_in_background(data: bytes, key: str) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["info"] = get_store().put(key, data)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_an_upload_rides_out_a_short_outage_and_resumes_its_parts(
    cuttable_s3: CuttableProxy, s3_bucket: str, moto_endpoint: str
) -> None:
    data = os.urandom(30 * 2**20)  # six 5 MiB parts
    thread, outcome = upload_in_background(data, "big/blob.bin")
    deadline = time.monotonic() + 60
    while cuttable_s3.sent_upstream < 12 * 2**20:  # two parts are in
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.01)
    cuttable_s3.cut()
    time.sleep(3)
    cuttable_s3.restore()
    thread.join(timeout=120)
    assert "error" not in outcome, outcome
    assert get_store().get_bytes("big/blob.bin") == data
    assert cuttable_s3.sent_upstream < 1.4 * len(data)  # resumed, not sent again from the start
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_a_long_outage_fails_in_one_line_and_leaves_nothing_after_the_sweep(
    cuttable_s3: CuttableProxy, s3_bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraflow import settings as settings_module

    monkeypatch.setenv("LORAFLOW_S3_RETRY_WINDOW", "2")
    settings_module.reset()
    data = os.urandom(20 * 2**20)
    thread, outcome = upload_in_background(data, "files/file-abcdefgh12345678/content")
    while cuttable_s3.sent_upstream < 6 * 2**20:
        assert thread.is_alive(), outcome
        time.sleep(0.01)
    cuttable_s3.cut()  # and it stays down past the retry window
    thread.join(timeout=120)
    error = outcome["error"]
    assert isinstance(error, StorageError) and "\n" not in str(error)
    assert "upload (part" in str(error)
    cuttable_s3.restore()
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")  # the abort failed too
    FileRepository.from_settings().sweep(older_than=timedelta(0))
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert not list(get_store().list("files/"))


def put_directly(moto_endpoint: str, bucket: str, key: str, data: bytes) -> None:
    boto3.client("s3", endpoint_url=moto_endpoint).put_object(Bucket=bucket, Key=key, Body=data)


def test_a_download_cut_mid_stream_resumes_where_it_was_cut(
    cuttable_s3: CuttableProxy, s3_bucket: str, moto_endpoint: str, tmp_path: Path
) -> None:
    data = os.urandom(24 * 2**20)
    put_directly(moto_endpoint, s3_bucket, "datasets/big/blob.bin", data)
    cuttable_s3.cut_after(8 * 2**20, outage=2)  # a third of the way down, for 2 s
    dest = get_store().download("big/blob.bin", tmp_path / "blob.bin")
    assert cuttable_s3.outages == 1
    assert dest.read_bytes() == data
    assert cuttable_s3.sent_downstream < 1.4 * len(data)  # the rest, not all of it again
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["blob.bin"]


def test_a_download_cut_past_the_window_fails_in_one_line_and_leaves_no_file(
    cuttable_s3: CuttableProxy,
    s3_bucket: str,
    moto_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loraflow import settings as settings_module

    monkeypatch.setenv("LORAFLOW_S3_RETRY_WINDOW", "2")
    settings_module.reset()
    put_directly(moto_endpoint, s3_bucket, "datasets/big/blob.bin", os.urandom(12 * 2**20))
    cuttable_s3.cut_after(4 * 2**20, outage=60)
    with pytest.raises(StorageError) as caught:
        get_store().download("big/blob.bin", tmp_path / "out" / "blob.bin")
    cuttable_s3.restore()
    assert "\n" not in str(caught.value) and "reading" in str(caught.value)
    assert not any((tmp_path / "out").iterdir())  # no partial file left behind
    with pytest.raises(NotFoundError):  # a missing object is not an outage: no retrying
        get_store().get_bytes("big/none.bin")


def test_a_checkpoint_write_rides_out_an_outage(
    cuttable_s3: CuttableProxy,
    s3_bucket: str,
    moto_endpoint: str,
    tiny_plan: Any,  # noqa: F811
) -> None:
    plan = tiny_plan(save_every=5)
    plan.checkpoints = CheckpointStore(get_store(), "fine-tunes/ft-outage/checkpoints")
    cuttable_s3.cut_on(b"/step-000010/", outage=3)  # storage goes as the 2nd checkpoint is sent
    result = Trainer(plan, RecordingReporter()).run()
    assert cuttable_s3.outages == 1
    latest = plan.checkpoints.latest()
    assert latest is not None and latest.step == result.steps
    names = sorted(latest.files)
    for step in range(5, result.steps, 5):  # every checkpoint is whole and readable
        for name in names:
            assert get_store().get_bytes(f"{plan.checkpoints.prefix}/step-{step:06d}/{name}")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
