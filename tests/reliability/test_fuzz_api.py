"""Schema-driven fuzzing of both HTTP APIs (LLM Engine's and OpenAI's) with schemathesis.

The schema is the one the server publishes at /openapi.json (built here from the same app, so
each operation is a test of its own); every operation gets valid and invalid requests
(seeded, so a failure replays), sent over HTTP to a real uvicorn server on a tiny model.
schemathesis checks every answer: no 5xx, status codes, headers and bodies as the schema
documents them, invalid input refused with a 4xx, valid input accepted.
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    ignored_auth,
    positive_data_acceptance,
)

from tests.server.conftest import API_KEY, server  # noqa: F401  (the shared uvicorn server)

pytestmark = pytest.mark.reliability
# per operation and mode: enough to reach every field, bounded for CI; raise it locally with
# LORAFLOW_FUZZ_EXAMPLES=500 for a deeper run
EXAMPLES = int(os.environ.get("LORAFLOW_FUZZ_EXAMPLES", "25"))
# Valid by the schema but refused with a 400 by what the schema cannot say: a file's content,
# a base model the server's settings allow, hyperparameters a recipe takes, a name another
# model has, a prompt longer than the model's context.
CHECKED_BEYOND_THE_SCHEMA = {
    "POST /v1/files",
    "POST /v1/llm/fine-tunes",
    "POST /v1/llm/model-endpoints",
    "PUT /v1/llm/model-endpoints/{name}",
    "POST /v1/llm/completions-sync",
    "POST /v1/llm/completions-stream",
    "POST /v1/completions",
    "POST /v1/chat/completions",
    "POST /api/v1/execute/{model}",
}

# Start a Prefect job: with no deployment registered (none is, here) they answer 503 saying
# what to start, the one 5xx the service gives on purpose.
NEED_A_WORKER = {
    "POST /v1/llm/fine-tunes",
    "POST /v1/llm/batch-completions",
    "POST /v2/batch-completions",
}


def published_schema() -> schemathesis.BaseSchema:
    from loraflow.server import build

    schema = schemathesis.openapi.from_dict(build([API_KEY]).openapi())
    schema.config.update(headers={"x-api-key": API_KEY}, request_timeout=60)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=EXAMPLES,
        deterministic=True,
    )
    return schema


schema = published_schema()


def test_the_server_publishes_this_schema(server: str) -> None:  # noqa: F811
    assert httpx.get(f"{server}/openapi.json").json() == schema.raw_schema


@schema.parametrize()
def test_no_request_breaks_the_service(case: schemathesis.Case, server: str) -> None:  # noqa: F811
    # every request carries the right key, so a wrong one beside it is not the point here
    # (test_every_operation_needs_the_key is)
    excluded = [ignored_auth]
    operation = f"{case.operation.method.upper()} {case.operation.path}"
    if operation in CHECKED_BEYOND_THE_SCHEMA:
        excluded.append(positive_data_acceptance)
    if operation in NEED_A_WORKER:
        excluded.append(not_a_server_error)
    if operation == "POST /v1/llm/model-endpoints/download":
        # the path is also /v1/llm/model-endpoints/{name} (a model named "download"): its Allow
        # rightly names GET, PUT and DELETE too, which this operation's entry does not list
        excluded.append(allow_header_conformance)
    response = case.call_and_validate(base_url=server, excluded_checks=excluded)
    if response.status_code >= 500:
        assert operation in NEED_A_WORKER, response.text
        assert response.status_code == 503, response.text
        assert "deployment" in response.json()["detail"] and "make up" in response.text


OPERATIONS = [
    (method.upper(), path)
    for path, item in schema.raw_schema["paths"].items()
    for method, operation in item.items()
    if operation.get("security") != []
]


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"x-api-key": "wrong"},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic d3Jvbmc6"},  # wrong:
    ],
    ids=["none", "x-api-key", "bearer", "basic"],
)
def test_every_operation_needs_the_key(server: str, credentials: dict[str, str]) -> None:  # noqa: F811
    assert len(OPERATIONS) > 20
    with httpx.Client(base_url=server, headers=credentials) as client:
        for method, path in OPERATIONS:
            concrete = path.replace("{file_id}", "file-0").replace("{job_id}", "ft-0")
            concrete = concrete.replace("{name}", "m").replace("{model}", "m")
            response = client.request(method, concrete, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"]
