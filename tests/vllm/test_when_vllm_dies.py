"""A vLLM server that dies: requests in flight get a 503 with a message (no hang), /readyz
says so, and loraflow starts the server it runs again. (Runs last of tests/vllm: it kills the
session's server, which comes back on another port.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from loraflow import Completion
from loraflow.errors import UnavailableError
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
    # 16 long generations keep vLLM busy, so the stream below is still running when it dies
    # (alone, the tiny model can finish 1,000 tokens before the kill lands)
    busy: dict[str, BaseException] = {}

    def load() -> None:
        try:
            Completion.generate(
                TINY, ["Tell me a long story", "And another"], num_generations=8,
                max_new_tokens=1000, temperature=1.0, seed=1, timeout=300,
            )  # fmt: skip
        except BaseException as exc:  # what a caller in flight gets
            busy["error"] = exc

    loader = threading.Thread(target=load)
    loader.start()
    stream = Completion.create(
        TINY, "Tell me everything", max_new_tokens=1000, stream=True, timeout=300
    )
    first = next(stream)
    assert first.output is not None
    os.killpg(vllm_tiny.proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    began = time.monotonic()
    with pytest.raises(UnavailableError) as caught:
        for _ in stream:
            pass
    loader.join(timeout=60)
    assert time.monotonic() - began < 30  # an error, not a hang
    assert caught.value.status == 503 and "vLLM" in str(caught.value)
    assert isinstance(busy.get("error"), UnavailableError), busy  # every caller in flight

    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 503 and "vLLM" in ready.json()["detail"]
    answer = httpx.post(
        f"{server}/v1/llm/completions-sync?model_endpoint_name={TINY}",
        json={"prompt": "Hi", "max_new_tokens": 4, "temperature": 0},
        headers={"x-api-key": API_KEY},
        timeout=60,
    )
    assert answer.status_code == 503 and "vLLM" in answer.json()["detail"]

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
