"""Shared fixtures: an isolated loraflow home per test, a moto S3 server over real HTTP,
and one Prefect test harness per session (it takes seconds to start)."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from loraflow import settings as settings_module

if TYPE_CHECKING:
    from loraflow.registry import ModelRecord

# tests/with_llm drive the published llm, which needs an openai that .venv's scale-llm-engine
# refuses: `make test` runs them with .venv-llm's python (see the Makefile)
collect_ignore = [] if importlib.util.find_spec("llm") else ["with_llm"]

# Where a test runs Prefect's ephemeral API (no harness), it keeps one database for the whole
# session instead of one per test home (a new one costs seconds of migrations). Set before
# Prefect is imported: its settings are read once. tests/test_history.py unsets it.
_PREFECT_DIR = tempfile.mkdtemp(prefix="loraflow-tests-prefect-")
atexit.register(shutil.rmtree, _PREFECT_DIR, True)
os.environ.setdefault(
    "PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{_PREFECT_DIR}/prefect.db"
)

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared base models, shared by the session: each is built or converted once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with MLflow's tables made and nothing in them, once a session:
    making them (MLflow's migrations) takes seconds, and every home would make its own."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    # the tracking store's migrations make every table, the model registry's too
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def loraflow_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path, empty_mlflow_db: Path
) -> Iterator[Path]:
    """Every test gets its own loraflow home and fresh settings (base models are shared),
    with MLflow's tables already made in its ``mlflow.db``."""
    import mlflow

    for name in list(os.environ):
        if name.startswith("LORAFLOW_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(empty_mlflow_db, home / "mlflow.db")
    # MLflow's tracking URI is process-global: point it here, not at the last test's home (or
    # at an mlflow.db in the working directory) before loraflow sets it from the settings
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(models_dir))
    settings_module.reset()
    yield home
    settings_module.reset()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server in its own process on 127.0.0.1, reached over HTTP."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server, with AWS test credentials in the environment."""
    import boto3

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    bucket = f"loraflow-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def use_s3(s3_bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point loraflow's settings at the moto bucket; returns the storage URI."""
    uri = f"s3://{s3_bucket}/datasets"
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", uri)
    monkeypatch.setenv("LORAFLOW_S3_ENDPOINT_URL", moto_endpoint)
    settings_module.reset()
    return uri


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test once on the local directory store and once on S3 (moto over HTTP)."""
    if request.param == "s3":
        request.getfixturevalue("use_s3")
    return request.param


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on Prefect's harness are the integration tier; `make test-fast` leaves them out."""
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test harness (temporary database and API) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def smollm2_tuned(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, prefect_harness: None
) -> tuple[Path, ModelRecord]:
    """The session's one fine-tune of the real SmolLM2-135M, through the flow imported from
    Python (two steps on 16 rows), in a home of its own: the real-path smoke tests share it
    (it takes most of a minute here). Returns that home and the registered model's record."""
    from loraflow.registry import ModelRecord
    from tests.helpers import in_home, tiny_fine_tune

    home = tmp_path_factory.mktemp("smollm2-tuned")
    with in_home(home, models_dir):
        outcome = tiny_fine_tune(
            home, "smoke", rows=16, model="smollm2-135m-instruct",
            epochs=1, batch_size=8, lr=0.002, validation_fraction=0,
        )  # fmt: skip
    assert isinstance(outcome, ModelRecord), outcome
    return home, outcome
