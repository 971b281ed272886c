"""Concurrent callers share batches; a caller that leaves is dropped; errors reach callers."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from loraflow.engine import Engine, Request, Sampling
from loraflow.engine.scheduler import Scheduler

GREEDY = Sampling(max_new_tokens=12, temperature=0)
PROMPTS = ["Hi", "Where is my order?", "Cancel my plan", "Refund please", "Thanks", "Help"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("tiny-llama-test")


def text(events: Any) -> str:
    return "".join(e.text for e in events)


def test_concurrent_callers_are_batched_and_get_their_own_answers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = {p: text(engine.stream([Request(engine.encode(p), None, GREEDY)])) for p in PROMPTS}
    sizes: list[int] = []
    real = engine.generate_batch

    def recording(requests: list[Request]) -> Any:
        sizes.append(len(requests))
        return real(requests)

    monkeypatch.setattr(engine, "generate_batch", recording)
    engine._scheduler = Scheduler(engine, window=0.2)
    results: dict[str, str] = {}
    start = threading.Barrier(len(PROMPTS))

    def call(prompt: str) -> None:
        start.wait()
        results[prompt] = text(engine.submit([Request(engine.encode(prompt), None, GREEDY)]))

    threads = [threading.Thread(target=call, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == alone  # batching changes no answer
    assert sum(sizes) == len(PROMPTS) and len(sizes) < len(PROMPTS)  # fewer batches than calls


def test_a_caller_that_leaves_is_dropped_and_others_finish(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    produced: list[int] = []
    real = engine.generate_batch

    def counting(requests: list[Request]) -> Any:
        for event in real(requests):
            produced.append(event.index)
            yield event

    monkeypatch.setattr(engine, "generate_batch", counting)
    engine._scheduler = Scheduler(engine, window=0.2)
    long = Sampling(max_new_tokens=200, temperature=0)
    leaving = engine.submit([Request(engine.encode("Hi"), None, long)])
    staying = engine.submit([Request(engine.encode("Hi"), None, GREEDY)])
    next(leaving)
    leaving.close()  # like a client disconnecting mid-stream
    events = list(staying)
    assert events[-1].finished and len(events) == events[-1].completion_tokens
    after = list(engine.submit([Request(engine.encode("Thanks"), None, GREEDY)], timeout=30))
    assert after[-1].finished  # the engine serves the next caller
    assert produced.count(0) < 50  # the leaver's generation stopped, far short of 200 tokens


def test_a_failing_batch_raises_in_its_callers_and_the_scheduler_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine._scheduler = Scheduler(engine)
    real = engine.generate_batch
    calls = {"n": 0}

    def flaky(requests: list[Request]) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return real(requests)

    monkeypatch.setattr(engine, "generate_batch", flaky)
    with pytest.raises(RuntimeError, match="device lost"):
        list(engine.submit([Request(engine.encode("Hi"), None, GREEDY)]))
    assert list(engine.submit([Request(engine.encode("Hi"), None, GREEDY)]))[-1].finished
