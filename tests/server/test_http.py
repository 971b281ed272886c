"""The service over raw HTTP: auth, health, error shapes and statuses, streaming framing."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.server.conftest import API_KEY, UPLOAD_LIMIT

MODEL = "tiny-llama-test"
SYNC = f"/v1/llm/completions-sync?model_endpoint_name={MODEL}"
STREAM = f"/v1/llm/completions-stream?model_endpoint_name={MODEL}"
BODY = {"prompt": "Hi", "max_new_tokens": 5, "temperature": 0}


def client(server: str, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=server, headers=headers, timeout=60)


def test_health_is_open_and_everything_else_needs_a_key(server: str) -> None:
    anon = client(server)
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/readyz").status_code == 200
    for method, path in (("GET", "/v1/files"), ("POST", SYNC), ("GET", "/v1/models")):
        response = anon.request(method, path, json=BODY)
        assert response.status_code == 401, path
        assert "API key" in response.json()["detail"]
    wrong = client(server, **{"x-api-key": "nope"}).get("/v1/files")
    assert wrong.status_code == 401 and "nope" not in wrong.text
    basic = base64.b64encode(f"{API_KEY}:".encode()).decode()
    for headers in (
        {"x-api-key": API_KEY},
        {"Authorization": f"Basic {basic}"},
        {"Authorization": f"Bearer {API_KEY}"},
    ):
        assert client(server, **headers).get("/v1/files").status_code == 200, headers


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        (SYNC, b"{not json", 400, "not valid JSON"),
        (SYNC, {"prompt": "Hi", "temperature": 0}, 400, "max_new_tokens: Field required"),
        (SYNC, {**BODY, "temperature": 1.5}, 400, "temperature"),
        (SYNC, {**BODY, "max_new_tokens": 0}, 400, "max_new_tokens"),
        (SYNC, {**BODY, "max_new_tokens": 10**6}, 400, "max_new_tokens"),
        (SYNC, {**BODY, "prompt": "word " * 5000}, 400, "context window"),
        (SYNC, {**BODY, "guided_regex": "a+"}, 400, "guided_regex"),
        ("/v1/llm/completions-sync?model_endpoint_name=nope", BODY, 404, "nope"),
        (STREAM.replace(MODEL, "nope"), BODY, 404, "nope"),
        (STREAM, {**BODY, "temperature": 7}, 400, "temperature"),
        ("/v1/llm/fine-tunes", {"model": MODEL}, 400, "training_file"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "temperature": 2}, 400, "temperature"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ],
)
def test_bad_requests_get_4xx_with_a_detail_and_the_server_goes_on(
    server: str, path: str, body: object, status: int, detail: str
) -> None:
    http = client(server, **{"x-api-key": API_KEY})
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert http.post(SYNC, json=BODY).status_code == 200


def test_oversize_uploads_get_413_and_store_nothing(server: str) -> None:
    from loraflow.storage import get_store

    http = client(server, **{"x-api-key": API_KEY})
    big = b"prompt,response\n" + b"a,b\n" * (UPLOAD_LIMIT // 4 + 1)
    response = http.post("/v1/files", files={"file": ("big.csv", big)})
    assert response.status_code == 413 and "max_upload_bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n\r\n'
        for _ in range(UPLOAD_LIMIT // 2**16 + 2):
            yield b"a,b\n" * 2**14
        yield b"\r\n--b--\r\n"

    streamed = http.post(
        "/v1/files", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413
    assert not list(get_store().list("files/"))


def test_llm_engine_stream_is_one_json_object_a_line_with_no_done(server: str) -> None:
    http = client(server, **{"x-api-key": API_KEY})
    with http.stream("POST", STREAM, json={**BODY, "return_token_log_probs": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    chunks = [json.loads(line.removeprefix("data:")) for line in lines]
    assert all(c["request_id"] == chunks[0]["request_id"] for c in chunks)
    assert [c["output"]["finished"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    whole = http.post(SYNC, json={**BODY, "return_token_log_probs": True}).json()
    assert "".join(c["output"]["text"] for c in chunks) == whole["output"]["text"]
    assert [c["output"]["token"] for c in chunks] == whole["output"]["tokens"]


def test_a_disconnected_stream_stops_its_generation_and_a_silent_reader_stalls_no_one(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraflow.engine import get_engine
    from tests.engine.test_scheduler import Recorder

    recorder = Recorder(get_engine(MODEL), monkeypatch)
    http = client(server, **{"x-api-key": API_KEY})
    long = {**BODY, "max_new_tokens": 400}
    with http.stream("POST", STREAM, json=long) as response:
        next(response.iter_lines())  # the first event arrived; then the client hangs up
    assert http.post(SYNC, json=BODY).status_code == 200  # served meanwhile
    assert get_engine(MODEL)._scheduler.idle.wait(timeout=120)  # nothing left running
    assert len(recorder.events) < 300  # the long one stopped at the disconnect, not at 400

    silent = http.stream("POST", STREAM, json=long)  # opened, never read
    silent.__enter__()
    try:  # the unread stream's tokens queue up; others are served (or this times out)
        assert http.post(SYNC, json=BODY).status_code == 200
    finally:
        silent.__exit__(None, None, None)


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("/v1/chat/completions", {"presence_penalty": 0.5}, "presence_penalty"),
        ("/v1/chat/completions", {"frequency_penalty": -1.0}, "frequency_penalty"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
        ("/v1/chat/completions", {"logit_bias": {"50": 10}}, "logit_bias"),
        ("/v1/chat/completions", {"guided_choice": ["a", "b"]}, "guided_choice"),
        ("/v1/completions", {"echo": True}, "echo"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"suffix": "end"}, "suffix"),
    ],
)
def test_openai_settings_loraflow_cannot_honour_are_refused_by_name(
    server: str, path: str, extra: dict[str, object], field: str
) -> None:
    http = client(server, **{"x-api-key": API_KEY})
    body = CHAT if "chat" in path else {"model": MODEL, "prompt": "Hi", "temperature": 0}
    refused = http.post(path, json={**body, "max_tokens": 4, **extra})
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"].startswith(f"{field}: not supported by loraflow")


def test_settings_that_change_nothing_are_accepted(server: str) -> None:
    http = client(server, **{"x-api-key": API_KEY})
    same = {
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "response_format": {"type": "text"},
        "tool_choice": "none",
    }
    plain = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).json()
    neutral = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4, **same}).json()
    assert neutral["choices"][0]["message"] == plain["choices"][0]["message"]
    best_of_one = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "best_of": 1}
    assert http.post("/v1/completions", json=best_of_one).status_code == 200


def test_a_chat_without_max_tokens_may_fill_the_context_window(server: str) -> None:
    http = client(server, **{"x-api-key": API_KEY})
    long = {"role": "user", "content": "hello world " * 160}  # near the tiny model's 1024
    answer = http.post("/v1/chat/completions", json={**CHAT, "messages": [long]}).json()
    usage = answer["usage"]
    assert usage["completion_tokens"] > 16  # not OpenAI's legacy 16 of /v1/completions
    assert answer["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 1024
    legacy = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "temperature": 0})
    assert legacy.json()["usage"]["completion_tokens"] == 16


def test_metrics_for_prometheus_need_the_key_and_count_the_work(server: str) -> None:
    http = client(server, **{"x-api-key": API_KEY})
    assert client(server).get("/metrics").status_code == 401
    before = _tokens(http.get("/metrics").text)
    for _ in range(2):
        assert http.post(SYNC, json=BODY).status_code == 200
    text = http.get("/metrics").text
    assert _tokens(text) == before + 2 * 5  # max_new_tokens 5, greedy: no early stop here
    for name in (
        'http_requests_total{handler="/v1/llm/completions-sync",method="POST",status="2xx"}',
        'loraflow_completions_total{finish_reason="length",model="tiny-llama-test"}',
        'loraflow_time_to_first_token_seconds_count{model="tiny-llama-test"}',
        'loraflow_engine_batch_size_count{base_model="tiny-llama-test"}',
        'loraflow_engine_queue_depth{base_model="tiny-llama-test"}',
        "http_request_duration_seconds_bucket",
    ):
        assert name in text, name
    assert API_KEY not in text


def _tokens(text: str) -> float:
    prefix = 'loraflow_generated_tokens_total{model="tiny-llama-test"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_docs_work_offline(server: str) -> None:
    import re

    page = httpx.get(f"{server}/docs")
    assert page.status_code == 200
    assert not re.findall(r"""(?:src|href)=["']https?://""", page.text)  # nothing from a CDN
    for asset in re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page.text):
        assert httpx.get(server + asset).status_code == 200, asset
    assert "swagger-ui-bundle.js" in page.text


def test_every_model_says_when_it_was_created(server: str) -> None:
    http = client(server, **{"x-api-key": API_KEY})
    assert http.post(SYNC, json=BODY).status_code == 200  # the tiny model is prepared now
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert all(card["created"] > 1_700_000_000 for card in cards.values()), cards
    assert cards[MODEL]["owned_by"] == "base"


def test_each_request_is_one_json_access_line_without_the_key(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    http = client(server, **{"authorization": f"Bearer {API_KEY}"})

    def logged() -> list[dict[str, object]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "loraflow.access"]

    with caplog.at_level("INFO", logger="loraflow.access"):
        assert http.post(SYNC, json=BODY).status_code == 200
        assert client(server).get("/v1/models").status_code == 401
        # a line is written once the response has gone: the client may read it first
        deadline = time.monotonic() + 10
        while len(logged()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = logged()
    done = [x for x in lines if x["path"] == "/v1/llm/completions-sync"][-1]
    assert done["method"] == "POST" and done["status"] == 200 and done["ms"] > 0
    assert done["client"].startswith("127.0.0.1:") and "query" not in done
    assert [x["status"] for x in lines if x["path"] == "/v1/models"] == [401]
    assert "model_endpoint_name" not in json.dumps(lines)  # the path, never the query
    assert API_KEY not in caplog.text  # in no record of any logger (httpx logs URLs at INFO)


def test_each_app_counts_its_own_requests_when_a_process_builds_several() -> None:
    from fastapi.testclient import TestClient

    from loraflow.server import build

    build([API_KEY])  # an earlier app in this process (a test's, a restarted server's)
    with TestClient(build([API_KEY])) as later:
        assert later.get("/v1/models", headers={"x-api-key": API_KEY}).status_code == 200
        text = later.get("/metrics", headers={"x-api-key": API_KEY}).text
    assert 'http_requests_total{handler="/v1/models",method="GET",status="2xx"} 1.0' in text
    assert "loraflow_generated_tokens" in text  # the process's metrics follow the app's
