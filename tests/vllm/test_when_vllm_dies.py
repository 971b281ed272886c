"""A vLLM server that dies: requests in flight get a 503 with a message (no hang), /readyz
says so, and loraflow starts the server it runs again. (Runs last of tests/vllm: it kills the
session's server, which comes back on another port.)"""

from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlsplit

import httpx
import pytest

from loraflow import Completion
from loraflow.errors import UnavailableError
from tests.reliability.proxy import CuttableProxy
from tests.server.conftest import API_KEY, server  # noqa: F401  (the shared uvicorn server)
from tests.vllm.conftest import TINY


def test_a_dead_vllm_fails_requests_with_503_and_is_started_again(
    vllm_tiny: object,
    on_vllm: str,
    server: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loraflow import settings as settings_module
    from loraflow import vllm

    assert httpx.get(f"{server}/readyz").status_code == 200
    # vLLM is frozen the moment its first token passes a proxy, and the proxy passes on that
    # one event only, so the stream cannot finish before the kill lands (the tiny model makes
    # 900 tokens in about a second: a proxy thread starved that long read them all at once)
    group = vllm_tiny.proc.pid  # type: ignore[attr-defined]
    proxy = CuttableProxy(urlsplit(vllm_tiny.url).port)  # type: ignore[attr-defined]
    monkeypatch.setenv("LORAFLOW_SERVING__VLLM_URL", proxy.url)
    settings_module.reset()
    vllm._BACKENDS.clear()
    proxy.when(b"data:", lambda: os.killpg(group, signal.SIGSTOP), hold=True)
    stream = Completion.create(TINY, "Tell me everything", max_new_tokens=900, stream=True)
    first = next(stream)
    assert first.output is not None and not first.output.finished
    os.killpg(group, signal.SIGKILL)
    began = time.monotonic()
    with pytest.raises(UnavailableError) as caught:
        for _ in stream:
            pass
    assert time.monotonic() - began < 30  # an error, not a hang
    assert caught.value.status == 503 and "vLLM" in str(caught.value)

    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 503 and "vLLM" in ready.json()["detail"]
    answer = httpx.post(
        f"{server}/v1/llm/completions-sync?model_endpoint_name={TINY}",
        json={"prompt": "Hi", "max_new_tokens": 4, "temperature": 0},
        headers={"x-api-key": API_KEY},
        timeout=60,
    )
    assert answer.status_code == 503 and "vLLM" in answer.json()["detail"]
    proxy.close()

    # loraflow's own server comes back: the first call after the death starts it again
    with pytest.raises(UnavailableError, match="restarting"):
        vllm_tiny.ensure()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 600
    while not vllm_tiny.running():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "vLLM did not come back"
        time.sleep(1)
    monkeypatch.setenv("LORAFLOW_SERVING__VLLM_URL", vllm_tiny.url)  # type: ignore[attr-defined]
    settings_module.reset()
    vllm._BACKENDS.clear()
    assert Completion.create(TINY, "Hi", max_new_tokens=4, temperature=0).output.text
    assert httpx.get(f"{server}/readyz").status_code == 200
