"""Serving backend settings that cannot work fail at start, naming the setting."""

from __future__ import annotations

import threading
import time
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


def test_a_server_warms_its_models_in_the_background_not_ready_until_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, preload='["tiny-llama-test", "no-such-model"]')
    release, seen = threading.Event(), []

    def slow_then_real(reference: str) -> None:  # loraflow's seam: the load itself
        seen.append(reference)
        release.wait(30)
        real(reference)

    real = backends.preload
    monkeypatch.setattr(backends, "preload", slow_then_real)
    thread = backends.start()
    assert thread is not None
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    [problem] = backends.problems()
    assert problem.startswith("warming up: loading tiny-llama-test, no-such-model")
    release.set()
    thread.join(120)
    assert backends.problems() == []  # the unknown model is logged, and does not block ready
    assert seen == ["tiny-llama-test", "no-such-model"]
    from loraflow.engine.engine import _ENGINES

    assert "tiny-llama-test" in _ENGINES  # loaded: the first request does not wait


def test_unset_preload_warms_each_champion_and_empty_warms_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loraflow import registry

    monkeypatch.setattr(registry, "champions", lambda: ["support@champion"])
    assert backends.warm_set() == ["support@champion"]
    configure(monkeypatch, preload="[]")
    assert backends.start() is None and backends.problems() == []
