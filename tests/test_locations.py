"""Locations outside loraflow's store: a prefix means its newest data file, on S3 (moto over
HTTP) and in a local directory; reads and writes are whole."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from loraflow import locations
from loraflow.errors import InvalidRequestError, NotFoundError
from tests.helpers import csv_rows, write


def test_a_directory_prefix_means_its_newest_data_file(tmp_path: Path) -> None:
    old = write(tmp_path, "2026-01.csv", csv_rows(3))
    (tmp_path / "sub").mkdir()
    new = write(tmp_path / "sub", "2026-02.jsonl", '{"prompt": "a", "response": "b"}\n')
    write(tmp_path, "notes.txt", "not data")
    os.utime(old, (1_000, 1_000))
    assert locations.newest(f"{tmp_path}/", "dataset") == str(new)
    assert locations.newest(str(old), "dataset") == str(old)  # a file is itself
    assert locations.read(str(new), "dataset") == (new.read_bytes(), "2026-02.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotFoundError, match=r"dataset: no \.csv or \.jsonl file under"):
        locations.newest(f"{empty}/", "dataset")


def test_an_s3_prefix_means_its_newest_data_file(use_s3: str, s3_bucket: str) -> None:
    s3 = boto3.client("s3", endpoint_url=os.environ["LORAFLOW_S3_ENDPOINT_URL"])
    s3.put_object(Bucket=s3_bucket, Key="incoming/a.csv", Body=csv_rows(2).encode())
    s3.put_object(Bucket=s3_bucket, Key="incoming/readme.md", Body=b"x")
    s3.put_object(Bucket=s3_bucket, Key="incoming/b.csv", Body=csv_rows(3).encode())
    s3.put_object(Bucket=s3_bucket, Key="elsewhere/c.csv", Body=b"x")
    newest = locations.newest(f"s3://{s3_bucket}/incoming/", "dataset")
    # same-second uploads tie on LastModified; the key breaks the tie
    assert newest == f"s3://{s3_bucket}/incoming/b.csv"
    assert locations.read(newest, "dataset") == (csv_rows(3).encode(), "b.csv")
    with pytest.raises(NotFoundError, match=r"no \.csv or \.jsonl file under"):
        locations.newest(f"s3://{s3_bucket}/nothing/", "dataset")
    written = locations.write(f"s3://{s3_bucket}/out/r.jsonl", b"{}\n")
    assert locations.read(written, "x")[0] == b"{}\n"


def test_bad_locations_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="input_data_path: name a file id"):
        locations.read("", "input_data_path")
    with pytest.raises(NotFoundError, match="dataset: no file at"):
        locations.read(str(tmp_path / "gone.csv"), "dataset")
    with pytest.raises(InvalidRequestError, match="s3://bucket/key"):
        locations.read("s3://bucket-only", "dataset")
