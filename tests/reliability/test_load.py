"""Sustained load on a real ``loraflow serve``: 64 streaming clients for 30 s on both APIs
(``LORAFLOW_LOAD_SECONDS`` for a longer soak), no request fails, and the server's memory and
threads come back to where they were: a thread or memory kept per request shows within the
first thousand requests.

The load is benchmarks/load.py's (which reports the same figures on the real model)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from benchmarks.load import KEY, drive_http, footprint, start_server
from tests.conftest import free_port

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
MODEL = "tiny-llama-test"
SECONDS = float(os.environ.get("LORAFLOW_LOAD_SECONDS", "30"))


def test_64_streams_without_an_error_or_a_leak(tmp_path: Path, models_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLOW_")}
    env |= {
        "LORAFLOW_HOME": str(tmp_path / "home"),
        "LORAFLOW_MODELS_DIR": str(models_dir),
        "LORAFLOW_API_KEYS": KEY,
    }
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_server(port, env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        warm = drive_http(base, MODEL, clients=64, seconds=3, tokens=8)  # pools reach their size
        assert not warm.errors, warm.errors[:3]
        before = footprint(proc.pid)
        report = drive_http(base, MODEL, clients=64, seconds=SECONDS, tokens=24)
        time.sleep(2)  # the last streams' threads finish
        after = footprint(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(
        f"{report.requests} requests in {report.seconds:.0f} s "
        f"({report.requests_per_second:.1f}/s), TTFT p50 {report.ttft_ms(50):.0f} ms "
        f"p99 {report.ttft_ms(99):.0f} ms; RSS {before[0] >> 20} -> {after[0] >> 20} MiB, "
        f"threads {before[1]} -> {after[1]}",
        file=sys.stderr,
    )
    assert report.errors == [], report.errors[:5]
    assert report.requests >= 64 * 2  # every client got answers, not one slow request each
    assert after[1] <= before[1] + 4, (before, after)  # no thread left per request
    assert after[0] <= before[0] * 1.2 + 64 * 2**20, (before, after)  # no memory per request
    assert proc.returncode == 0, log.read_text()[-2000:]
