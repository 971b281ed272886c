"""aiXplain's verbs on loraflow models: in this process, and over HTTP from a "remote" client."""

from __future__ import annotations

import itertools

import httpx
import pytest

from loraflow import Completion
from loraflow.integrations import aixplain
from loraflow.integrations.aixplain import LLM
from tests.integrations.conftest import API_KEY

MODEL = "tiny-llama-test"
GREEDY = {"temperature": 0.0, "max_tokens": 6}


def sdk_text(prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> str:
    return Completion.create(
        MODEL, prompt, messages=messages, max_new_tokens=6, temperature=0.0
    ).output.text


def test_run_run_async_poll_and_stream_in_this_process() -> None:
    model = LLM(MODEL)
    done = model.run("Hello there", **GREEDY)
    assert done.status == "SUCCESS" and done["completed"] is True
    assert done.data == sdk_text("Hello there") and done.data
    assert done.usage is not None and done.usage["completion_tokens"] == 6
    assert done.usage["total_tokens"] == done.usage["prompt_tokens"] + 6 and done.run_time > 0

    started = model.run_async("Hello there", **GREEDY)
    assert started.status == "IN_PROGRESS" and started.url is not None
    assert model.sync_poll(started.url, wait_time=0.05).data == done.data

    pieces = list(model.run_stream("Hello there", **GREEDY))
    assert [p.status for p in pieces[:-1]] == ["IN_PROGRESS"] * (len(pieces) - 1)
    assert pieces[-1].status == "SUCCESS" and pieces[-1].data == done.data
    assert "".join(p.data for p in pieces[:-1]) == done.data
    assert pieces[-1].usage == done.usage


def test_context_prompt_and_history_become_the_chat() -> None:
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    got = LLM(MODEL).run(
        "how are you?", context="Be brief.", prompt="Answer:", history=history, **GREEDY
    )
    expected = sdk_text(
        messages=[
            {"role": "system", "content": "Be brief."},
            *history,
            {"role": "user", "content": "Answer:\nhow are you?"},
        ]
    )
    assert got.status == "SUCCESS" and got.data == expected


def test_failures_are_responses_that_say_why() -> None:
    missing = LLM("no-such-model").run("Hi")
    assert missing.status == "FAILED" and "no-such-model" in missing.error_message
    bad = LLM(MODEL).run("Hi", temperature=3.0)
    assert bad.status == "FAILED" and "temperature" in bad.error_message
    # a run still going when the timeout ends: FAILED, with the URL to poll later
    slow = LLM(MODEL).run("Hi", max_tokens=200, timeout=0.01)
    assert slow.status == "FAILED" and "no response in 0.01 s" in slow.error_message
    assert slow.url is not None
    assert LLM(MODEL).sync_poll(slow.url, wait_time=0.05).status == "SUCCESS"
    unknown = LLM(MODEL).poll(aixplain.LOCAL + "0" * 32)
    assert unknown.status == "FAILED" and "no run" in unknown.error_message


def test_sync_poll_backs_off_as_aixplain_does(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    pending = [aixplain.ModelResponse(status="IN_PROGRESS")] * 70
    answers = iter([*pending, aixplain.ModelResponse(status="SUCCESS", completed=True)])
    model = LLM(MODEL)
    monkeypatch.setattr(model, "poll", lambda url, name="": next(answers))
    monkeypatch.setattr(aixplain.time, "sleep", waits.append)
    assert model.sync_poll("loraflow:runs/x", wait_time=0.05, timeout=1e9).completed
    assert len(waits) == 70 and waits[0] == 0.2  # from wait_time, at least 0.2 s
    for before, after in itertools.pairwise(waits):  # x1.1 a poll while under 60 s
        assert after == pytest.approx(before * 1.1 if before < 60 else before)
    assert 60 <= waits[-1] < 66


def test_to_dict_and_from_dict_keep_the_model_not_the_key(server: str) -> None:
    model = LLM(MODEL, "tiny", base_url=server, api_key=API_KEY)
    saved = model.to_dict()
    assert API_KEY not in repr(saved) and API_KEY not in repr(model)
    again = LLM.from_dict(saved, api_key=API_KEY)
    assert (again.id, again.name) == (MODEL, "tiny")
    assert again.run("Hi", **GREEDY).data == sdk_text("Hi")


def test_run_async_over_http_polls_from_anywhere(server: str) -> None:
    remote = LLM(MODEL, base_url=server, api_key=API_KEY)
    started = remote.run_async("Hello there", **GREEDY)
    assert started.status == "IN_PROGRESS" and started.url.startswith(server + "/api/v1/data/")

    # any HTTP client polls the URL: aiXplain's fields
    headers = {"x-api-key": API_KEY}
    done = remote.sync_poll(started.url, wait_time=0.05)
    assert done.status == "SUCCESS" and done.data == sdk_text("Hello there")
    raw = httpx.get(started.url, headers=headers).json()
    assert raw["completed"] is True and raw["status"] == "SUCCESS" and raw["data"] == done.data
    assert raw["usage"]["completion_tokens"] == 6 and raw["runTime"] > 0

    pieces = list(remote.run_stream("Hello there", **GREEDY))
    assert pieces[-1].data == done.data and pieces[-1].usage == done.usage

    unknown = httpx.get(f"{server}/api/v1/data/{'0' * 32}", headers=headers)
    assert unknown.status_code == 404 and "no run" in unknown.json()["detail"]
    assert httpx.post(f"{server}/api/v1/execute/{MODEL}", json={"data": "x"}).status_code == 401
    missing = httpx.post(f"{server}/api/v1/execute/nope", json={"data": "x"}, headers=headers)
    assert missing.status_code == 404
    failed = remote.run("Hi", temperature=3.0)
    assert failed.status == "FAILED" and "temperature" in failed.error_message
