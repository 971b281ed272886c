"""One real vLLM server for the session, started by loraflow's own code (``VllmServer``) on
the tiny model vLLM's CPU kernels take; tests reach it as ``serving.vllm_url``.

vLLM lives in its own virtualenv (``make setup-vllm``; ``.ci/run`` makes it). Without it these
tests are skipped, saying so: vLLM's pins clash with loraflow's, so it is never in ``.venv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow import settings as settings_module

ROOT = Path(__file__).resolve().parents[2]
TINY = "tiny-llama-vllm"
HAS_VLLM = (ROOT / ".venv-vllm" / "bin" / "python").is_file()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vllm/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
            if not HAS_VLLM:
                item.add_marker(
                    pytest.mark.skip(reason="no .venv-vllm: run `make setup-vllm` (CI makes it)")
                )


def vllm_env(mp: pytest.MonkeyPatch, **extra: str) -> None:
    """Settings serving completions from vLLM (the tiny model's: 1 GiB cache, float32)."""
    mp.setenv("LORAFLOW_SERVING__BACKEND", "vllm")
    mp.setenv("LORAFLOW_SERVING__VLLM_KV_CACHE_GB", "1")
    mp.setenv("LORAFLOW_SERVING__VLLM_DTYPE", "float32")  # as the engine computes the tiny model
    for name, value in extra.items():
        mp.setenv(name, value)
    settings_module.reset()


@pytest.fixture(scope="session")
def vllm_tiny(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The session's vLLM server of the tiny model, started as ``loraflow serve`` starts one."""
    from loraflow.models import prepare, resolve_model
    from loraflow.vllm.process import VllmServer

    home = tmp_path_factory.mktemp("vllm-home")
    with pytest.MonkeyPatch.context() as mp:
        vllm_env(mp, LORAFLOW_HOME=str(home), LORAFLOW_MODELS_DIR=str(models_dir))
        # the worker runs in vLLM's engine process instead of a third process of its own:
        # about 12 s less to start here. Only the tiny model's servers: SmolLM2's
        # (test_smollm2.py) starts as loraflow starts one for users
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        server = VllmServer(TINY, prepare(resolve_model(TINY)))
        server.ensure()
    settings_module.reset()
    yield server
    server.stop()


@pytest.fixture
def on_vllm(vllm_tiny: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's settings serve completions from the session's vLLM server."""
    from loraflow import vllm

    url: str = vllm_tiny.url  # type: ignore[attr-defined]
    vllm_env(monkeypatch, LORAFLOW_SERVING__VLLM_URL=url)
    vllm._BACKENDS.clear()
    yield url
    vllm._BACKENDS.clear()


def use_engine(mp: pytest.MonkeyPatch) -> None:
    mp.setenv("LORAFLOW_SERVING__BACKEND", "engine")
    settings_module.reset()


def use_vllm(mp: pytest.MonkeyPatch) -> None:
    mp.setenv("LORAFLOW_SERVING__BACKEND", "vllm")
    settings_module.reset()
