"""The File SDK against the local store and S3 (moto over HTTP)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from loraflow import DataValidationError, File, InvalidRequestError, NotFoundError
from loraflow.files import FileRepository
from loraflow.storage import get_store
from tests.helpers import csv_rows, write


def test_upload_round_trip(backend: str, tmp_path: Path) -> None:
    body = csv_rows(250)
    path = write(tmp_path, "train.csv", body)
    uploaded = File.upload(path)
    assert uploaded.id.startswith("file-")

    got = File.get(uploaded.id)
    assert (got.id, got.filename, got.size, got.rows) == (uploaded.id, "train.csv", len(body), 250)
    assert got.sha256 == hashlib.sha256(body.encode()).hexdigest()
    assert [f.id for f in File.list().files] == [uploaded.id]
    assert File.download(uploaded.id).content == body

    assert File.delete(uploaded.id).deleted is True
    assert File.list().files == []
    with pytest.raises(NotFoundError, match="could not be found"):
        File.get(uploaded.id)
    assert list(get_store().list()) == []


def test_metadata_rows_and_report_are_stored_beside_the_object(
    backend: str, tmp_path: Path
) -> None:
    file_id = File.upload(write(tmp_path, "d.csv", csv_rows(20))).id
    keys = sorted(o.key for o in get_store().list())
    parts = ("content", "meta.json", "report.json", "rows.parquet")
    assert keys == [f"files/{file_id}/{part}" for part in parts]
    rows = FileRepository.from_settings().rows(file_id)
    assert rows.columns == ["prompt", "response"] and rows["prompt"][19] == "question 19"
    report = json.loads(get_store().get_bytes(f"files/{file_id}/report.json"))
    assert report["summary"]["rows"] == 20 and report["issues"][0]["check"] == "min_rows"
    meta = json.loads(get_store().get_bytes(f"files/{file_id}/meta.json"))
    assert meta["filename"] == "d.csv" and meta["rows"] == 20 and meta["format"] == "csv"
    assert len(meta["sha256"]) == 64 and meta["created_at"]
    assert meta["validation"]["valid"] is True
    assert meta["validation"]["counts"] == {"min_rows": 1}  # the under-200-rows warning


@pytest.mark.parametrize("mode", ["rb", "r"])
def test_upload_open_file_objects(tmp_path: Path, mode: str) -> None:
    path = write(tmp_path, "obj.jsonl", '{"prompt": "é", "response": "b"}\n')
    with path.open(mode, encoding=None if "b" in mode else "utf-8") as handle:
        file_id = File.upload(handle).id
    assert File.get(file_id).filename == "obj.jsonl"
    assert File.download(file_id).content == path.read_text(encoding="utf-8")


def test_upload_in_memory_stream_is_named_upload() -> None:
    file_id = File.upload(io.BytesIO(b"prompt,response\na,b\n")).id
    assert File.get(file_id).filename == "upload"


def test_invalid_data_stores_nothing(backend: str, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "prompt,response\na,\n,b\n")
    with pytest.raises(DataValidationError) as caught:
        File.upload(path)
    assert [(i["line"], i["check"]) for i in caught.value.report.errors] == [
        (2, "not_null"),
        (3, "not_null"),
    ]
    assert "bad.csv is not valid" in str(caught.value)
    assert list(get_store().list()) == []


def test_failed_metadata_write_removes_the_content(tmp_path: Path) -> None:
    repo = FileRepository.from_settings()
    real_put = repo.store.put

    def put(key: str, source: object) -> object:
        if key.endswith("meta.json"):
            raise OSError("disk full")
        return real_put(key, source)

    repo.store.put = put  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        repo.upload(write(tmp_path, "d.csv", csv_rows(3)))
    assert list(repo.store.list()) == []


@pytest.mark.parametrize("bad_id", ["file-../../etc/passwd", "ft-abc12345", "file-", "file-a/b"])
def test_ids_are_checked_strictly(bad_id: str) -> None:
    for call in (File.get, File.download, File.delete):
        with pytest.raises(InvalidRequestError, match="not a loraflow file id"):
            call(bad_id)


def test_unknown_ids_are_not_found() -> None:
    for call in (File.get, File.download, File.delete):
        with pytest.raises(NotFoundError, match="file-abcdefgh12345678"):
            call("file-abcdefgh12345678")


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nope\.csv"):
        File.upload(tmp_path / "nope.csv")
