"""``loraflow serve`` as users start it: a subprocess that makes and shows a key once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.load import start_server
from tests.conftest import free_port


@pytest.mark.slow  # a real server process and Prefect's ephemeral server: the full suite only
def test_serve_without_keys_prints_a_new_one_once_and_never_logs_it(
    tmp_path: Path, models_dir: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLOW_")}
    env |= {"LORAFLOW_HOME": str(tmp_path / "home"), "LORAFLOW_MODELS_DIR": str(models_dir)}
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # a busy machine is slow
    env["LORAFLOW_SERVING__PRELOAD"] = '["tiny-llama-test"]'  # warmed while it answers
    log = tmp_path / "serve.log"
    proc = start_server(port, env, log, timeout=60)
    try:
        base = f"http://127.0.0.1:{port}"
        lines = log.read_text().splitlines()
        shown = [n for n, line in enumerate(lines) if "(shown once)" in line]
        assert len(shown) == 1
        key = lines[shown[0] + 1].strip()
        assert key.startswith("lf-") and len(key) > 20
        assert httpx.get(f"{base}/v1/models", headers={"x-api-key": key}).status_code == 200
        assert httpx.get(f"{base}/v1/models", headers={"x-api-key": "x"}).status_code == 401
        bearer = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert bearer.status_code == 200
        deadline = time.monotonic() + 120
        while (ready := httpx.get(f"{base}/readyz")).status_code != 200:
            assert "warming up: loading tiny-llama-test" in ready.text, ready.text
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert "warm: tiny-llama-test loaded in" in log.read_text()
        assert "Traceback" not in log.read_text()  # a 503 from /readyz is an answer, not a fault
        # a job call with no stack running starts Prefect's ephemeral server in a child
        jobs = httpx.get(f"{base}/v1/llm/fine-tunes", headers={"x-api-key": key}, timeout=120)
        assert jobs.status_code == 200, jobs.text + log.read_text()[-3000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no ephemeral Prefect server started: nothing to check"
    finally:
        proc.terminate()  # SIGTERM, as a supervisor or `kill` sends it
        proc.wait(timeout=60)
    assert proc.returncode == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    assert log.read_text().count(key) == 1  # printed once, never logged again
