"""Every LoraflowError a request raises reaches the client as its status and its message."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import httpx
import pytest

import loraflow
from loraflow.errors import LoraflowError
from loraflow.registry import ModelRecord, record_key
from loraflow.settings import reset
from loraflow.storage import get_store
from tests.conftest import free_port
from tests.helpers import csv_rows
from tests.server.conftest import API_KEY

# the faults of the server or what it relies on: they answer 5xx, still with their message
SERVER_FAULTS = {"ConfigError": 500, "StackError": 500, "StorageError": 503}


def call(server: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    with httpx.Client(base_url=server, headers={"x-api-key": API_KEY}, timeout=120) as client:
        return client.request(method, path, **kwargs)  # type: ignore[arg-type]


def upload(server: str, body: str) -> httpx.Response:
    return call(server, "POST", "/v1/files", files={"file": ("d.csv", body.encode())})


def test_a_bad_request_is_400_naming_the_field(server: str) -> None:
    body = {"model": "tiny-llama-test", "training_file": "file-abcdefgh", "suffix": "no spaces"}
    response = call(server, "POST", "/v1/llm/fine-tunes", json=body)
    assert response.status_code == 400 and "suffix is invalid" in response.json()["detail"]


def test_an_unknown_file_is_404(server: str) -> None:
    response = call(server, "GET", "/v1/files/file-abcdefgh12345678")
    assert response.status_code == 404 and "could not be found" in response.json()["detail"]


def test_invalid_data_is_400_with_the_report(server: str) -> None:
    response = upload(server, "prompt,response\nhello,\n")
    assert response.status_code == 400
    assert "not valid" in response.json()["detail"] and "line 2" in response.json()["detail"]


def test_a_broken_setting_is_500_saying_which(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", "ftp://nowhere/data")
    reset()
    response = call(server, "GET", "/v1/files")
    assert response.status_code == 500
    assert "storage_uri must start with file:// or s3://" in response.json()["detail"]


def test_storage_that_is_down_is_503_and_stores_nothing(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", "s3://bucket/data")
    monkeypatch.setenv("LORAFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("LORAFLOW_S3_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("LORAFLOW_S3_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("LORAFLOW_S3_REGION", "us-east-1")
    monkeypatch.setenv("LORAFLOW_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("LORAFLOW_S3_RETRY_WINDOW", "0")  # no riding out the outage here
    reset()
    response = upload(server, csv_rows(5))
    assert response.status_code == 503 and "upload to s3://bucket" in response.json()["detail"]


def test_a_model_this_server_cannot_serve_is_503_saying_why(server: str) -> None:
    # a fine-tune made on another revision of the base model than the one prepared here
    record = ModelRecord(
        fine_tuned_model="tiny-llama-test.elsewhere.261201-000000",
        job_id="ft-" + "a" * 20,
        base_model="tiny-llama-test",
        base_revision="another-revision",
        adapter_prefix="fine-tunes/ft-aaaaaaaaaaaaaaaaaaaa/adapter",
        model_uri="models:/m-0",
        mlflow_run_id="0" * 32,
        steps=1,
        training_file="file-abcdefgh",
        training_sha256="0" * 64,
    )
    get_store().put(record_key(record.fine_tuned_model), record.model_dump_json().encode())
    body = {"prompt": "Hi", "max_new_tokens": 2, "temperature": 0}
    path = f"/v1/llm/completions-sync?model_endpoint_name={record.fine_tuned_model}"
    response = call(server, "POST", path, json=body)
    assert response.status_code == 503
    assert "revision another-revision" in response.json()["detail"]


def test_every_error_class_is_a_4xx_unless_it_is_a_server_fault() -> None:
    optional = {"loraflow.integrations.llm_plugin": "llm"}  # .venv-llm has it: tests/with_llm
    for module in pkgutil.walk_packages(loraflow.__path__, "loraflow."):
        needs = optional.get(module.name)
        if needs and importlib.util.find_spec(needs) is None:
            continue
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    importlib.import_module("deployments.stack")
    found, todo = {}, [LoraflowError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls.status
        todo += cls.__subclasses__()
    assert {"InvalidRequestError", "NotFoundError", "DataValidationError"} <= set(found)
    for name, status in found.items():
        if name in SERVER_FAULTS:
            assert status == SERVER_FAULTS[name], name
        elif name.endswith("TimeoutError"):
            assert status == 504, name
        elif "Unavailable" in name:
            assert status == 503, name
        else:
            assert 400 <= status < 500, name
