"""A vLLM server that cannot serve its base model fails at start with the reason from its
log, and leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from loraflow.errors import UnavailableError
from tests.vllm.conftest import TINY, vllm_env


def test_a_server_that_cannot_start_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from loraflow.models import prepare, resolve_model
    from loraflow.vllm.process import VllmServer

    # a context longer than the model's: vLLM refuses it while loading
    vllm_env(monkeypatch, LORAFLOW_SERVING__VLLM_ARGS='["--max-model-len", "999999"]')
    server = VllmServer(TINY, prepare(resolve_model(TINY)))
    with pytest.raises(UnavailableError) as caught:
        server.ensure()
    message = str(caught.value)
    assert f"vLLM could not serve {TINY}" in message and "max_model_len" in message.lower()
    assert str(server.log_path) in message
    assert server.proc is not None and server.proc.poll() is not None
    assert not in_session(server.proc.pid)  # its engine processes went with it


def in_session(sid: int) -> list[int]:
    """Live processes of the session (process group) vLLM was started in."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return found
