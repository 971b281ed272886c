"""Serving backend settings that cannot work fail at start, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow import backends
from loraflow import settings as settings_module
from loraflow.errors import ConfigError, UnavailableError
from tests.conftest import free_port


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"LORAFLOW_SERVING__{name.upper()}", value)
    settings_module.reset()


def test_an_unknown_backend_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, backend="tgi")
    with pytest.raises(ConfigError, match=r"serving\.backend"):
        settings_module.get_settings()


def test_a_vllm_url_that_does_not_answer_fails_at_start_and_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    configure(monkeypatch, backend="vllm", vllm_url=url)
    with pytest.raises(ConfigError, match=r"serving\.vllm_url.*" + url):
        backends.start()
    from loraflow import Completion

    with pytest.raises(UnavailableError, match=r"serving\.vllm_url") as caught:
        Completion.create("tiny-llama-test", "Hi", max_new_tokens=2)
    assert caught.value.status == 503


def test_a_vllm_python_that_is_not_there_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configure(monkeypatch, backend="vllm", vllm_python=str(tmp_path / "no-python"))
    with pytest.raises(ConfigError, match=r"serving\.vllm_python"):
        backends.start()


def test_the_engine_backend_reports_its_framework(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backends.framework() == "text_generation_inference"
    configure(monkeypatch, backend="vllm")
    assert backends.framework() == "vllm"
