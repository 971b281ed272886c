"""A real uvicorn server on 127.0.0.1 running loraflow's service, shared by a module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port

API_KEY = "test-key-123"
UPLOAD_LIMIT = 2**20


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The service on a free port (in this process, so it sees each test's settings)."""
    import uvicorn

    from loraflow.server import build

    port = free_port()
    config = uvicorn.Config(
        build([API_KEY], UPLOAD_LIMIT),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def llmengine_env(server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the published llmengine client at the server (it reads these on every call)."""
    monkeypatch.setenv("LLM_ENGINE_DISABLE_VERSION_CHECK", "1")
    monkeypatch.setenv("LLM_ENGINE_BASE_PATH", server + "/")
    monkeypatch.setenv("SCALE_API_KEY", API_KEY)
    return server
