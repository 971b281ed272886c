"""Hostile requests get a 4xx naming what is wrong, never a 500: seeds out of range, lone
surrogates, huge names and bodies, server-local paths as base models."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import API_KEY, server  # noqa: F401  (the shared uvicorn server)

pytestmark = pytest.mark.reliability
MODEL = "tiny-llama-test"
HUGE_SEED = 99999999999999999999999


def call(base: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    with httpx.Client(base_url=base, headers={"x-api-key": API_KEY}, timeout=120) as client:
        return client.request(method, path, **kwargs)  # type: ignore[arg-type]


def detail(response: httpx.Response) -> str:
    body = response.json()
    return body["detail"] if "detail" in body else body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "seed": HUGE_SEED},
            "seed",
        ),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "seed": -HUGE_SEED}, "seed"),
        (
            f"/v1/llm/completions-sync?model_endpoint_name={MODEL}",
            {"prompt": "hi", "max_new_tokens": 2, "temperature": 0, "seed": HUGE_SEED},
            "seed",
        ),
        (
            f"/v1/llm/completions-sync?model_endpoint_name={MODEL}",
            {"prompt": "hi \ud800 there", "max_new_tokens": 2, "temperature": 0},
            "prompt",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "\udfff"}]},
            "messages[0].content",
        ),
        ("/v1/completions", {"model": "m" * 5000, "prompt": "hi"}, "model"),
        ("/v1/completions", {"model": "bad\ud800name", "prompt": "hi"}, ""),
    ],
)
def test_hostile_values_are_400_naming_the_field(
    server: str,  # noqa: F811
    path: str,
    body: dict,
    field: str,
) -> None:
    # json= would refuse to encode a lone surrogate; the escapes go on the wire as JSON allows
    import json

    raw = json.dumps(body).encode()
    response = call(server, "POST", path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert field in detail(response)
    assert len(detail(response)) < 400  # a huge value is not echoed back whole


def test_a_json_body_above_the_limit_is_413_before_it_is_parsed(server: str) -> None:  # noqa: F811
    prompt = "x" * (5 * 2**20)
    response = call(server, "POST", "/v1/completions", json={"model": MODEL, "prompt": prompt})
    assert response.status_code == 413
    assert "max_request_bytes" in detail(response)


def test_a_wrong_method_is_405_with_allow(server: str) -> None:  # noqa: F811
    response = call(server, "DELETE", "/v1/llm/fine-tunes")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"  # every method the path takes


@pytest.mark.parametrize("model", ["/tmp/some-checkpoint", "openai-community/gpt2", "../../etc"])
def test_over_http_a_base_model_must_be_in_the_zoo(server: str, model: str) -> None:  # noqa: F811
    body = {"model": model, "training_file": "file-abcdefgh12345678"}
    response = call(server, "POST", "/v1/llm/fine-tunes", json=body)
    assert response.status_code == 400
    assert "over HTTP" in detail(response) and MODEL in detail(response)
