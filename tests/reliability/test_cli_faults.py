"""The command line under faults: one clear line (``--debug`` for the traceback), no secret
shown, and one bad file does not hide the others."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraflow import File
from loraflow.storage import get_store
from tests.conftest import free_port
from tests.helpers import csv_rows, write

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loraflow", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_an_unreachable_store_is_one_line_without_the_password() -> None:
    dead = f"http://loraflow:hunter2secret@127.0.0.1:{free_port()}"
    env = {
        "LORAFLOW_STORAGE_URI": "s3://bucket/prefix",
        "LORAFLOW_S3_ENDPOINT_URL": dead,
        "LORAFLOW_S3_MAX_ATTEMPTS": "1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    done = cli("files", "list", env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: listing s3://bucket/prefix/files/ failed")
    assert "hunter2secret" not in done.stdout + done.stderr
    debug = cli("--debug", "files", "list", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "hunter2secret" not in debug.stdout + debug.stderr


def test_one_unreadable_file_record_is_skipped_and_named(tmp_path: Path) -> None:
    good = File.upload(write(tmp_path, "good.csv", csv_rows(3))).id
    bad = File.upload(write(tmp_path, "bad.csv", csv_rows(3, start=10))).id
    get_store().put(f"files/{bad}/meta.json", b"{not json")
    done = cli("files", "list")
    assert done.returncode == 0, done.stderr
    assert good in done.stdout and bad not in done.stdout
    assert f"files/{bad}/meta.json" in done.stderr and "unreadable" in done.stderr
