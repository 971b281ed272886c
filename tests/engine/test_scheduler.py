"""Continuous batching: callers share a running batch, join it mid-way, and leave it."""

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


def seeded(seed: int, tokens: int = 16) -> Sampling:
    return Sampling(max_new_tokens=tokens, temperature=1.0, seed=seed)


class Recorder:
    """Wraps the engine's decoders to record batch sizes and events (loraflow's own seam)."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[int] = []
        self.events: list[Any] = []
        real = engine.decoder

        def decoder() -> Any:
            d = real()
            admit, step = d.admit, d.step

            def admit_(keyed: Any) -> Any:
                out = admit(keyed)
                self.rows.append(len(d.rows))
                self.events += out
                return out

            def step_() -> Any:
                self.rows.append(len(d.rows))
                out = step()
                self.events += out
                return out

            d.admit, d.step = admit_, step_
            return d

        monkeypatch.setattr(engine, "decoder", decoder)


def test_a_request_joining_mid_way_gets_the_answer_it_gets_alone(engine: Engine) -> None:
    a = Request(engine.encode("Where is my order?"), None, seeded(1, 24))
    b = Request(engine.encode("Hi"), None, seeded(2, 8))
    c = Request(engine.encode("Cancel my plan, it is too expensive for me"), None, seeded(3))
    alone = [text(engine.stream([r])) for r in (a, b, c)]
    decoder = engine.decoder()
    events = decoder.admit([(0, a), (1, b)])
    for _ in range(3):
        events += decoder.step()
    events += decoder.admit([(2, c)])  # a longer prompt joins a running batch
    while decoder.rows:
        events += decoder.step()  # b finishes first and leaves; its columns are trimmed
    assert [text(e for e in events if e.index == k) for k in range(3)] == alone


def test_concurrent_callers_share_a_batch_and_get_their_own_answers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = {p: text(engine.stream([Request(engine.encode(p), None, seeded(7))])) for p in PROMPTS}
    recorder = Recorder(engine, monkeypatch)
    engine._scheduler = Scheduler(engine, window=0.2)
    results: dict[str, str] = {}
    start = threading.Barrier(len(PROMPTS))

    def call(prompt: str) -> None:
        start.wait()
        results[prompt] = text(engine.submit([Request(engine.encode(prompt), None, seeded(7))]))

    threads = [threading.Thread(target=call, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == alone  # batching changes no answer
    assert max(recorder.rows) > 1  # they ran together


def test_a_caller_that_leaves_is_dropped_and_others_finish(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(engine, monkeypatch)
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
    assert len(recorder.events) < 100  # the leaver stopped far short of its 200 tokens


def test_a_failing_batch_raises_in_its_callers_and_the_scheduler_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine._scheduler = Scheduler(engine)
    real = engine.decoder
    calls = {"n": 0}

    def flaky() -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return real()

    monkeypatch.setattr(engine, "decoder", flaky)
    with pytest.raises(RuntimeError, match="device lost"):
        list(engine.submit([Request(engine.encode("Hi"), None, GREEDY)]))
    assert list(engine.submit([Request(engine.encode("Hi"), None, GREEDY)]))[-1].finished


def test_event_loop_streams_need_no_thread_each_and_match_blocking_ones(engine: Engine) -> None:
    """The HTTP service's path (``loraflow.aio.submitted``): the scheduler wakes the loop."""
    import asyncio

    from loraflow.aio import submitted

    engine._scheduler = Scheduler(engine)
    requests = [[Request(engine.encode(p), None, GREEDY)] for p in PROMPTS]
    expected = [text(engine.submit(r)) for r in requests]
    threads: list[int] = []

    async def one(r: list[Request]) -> str:
        events = [e async for e in submitted(engine, r, None)]
        threads.append(threading.active_count())
        return text(events)

    async def all_of() -> list[str]:
        before = threading.active_count()
        got = await asyncio.gather(*(one(r) for r in requests))
        threads.append(before)
        return got

    assert asyncio.run(all_of()) == expected
    assert max(threads) <= threads[-1]  # six streams at once, not one more thread


def test_leaving_an_event_loop_stream_cancels_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from loraflow.aio import submitted

    recorder = Recorder(engine, monkeypatch)
    engine._scheduler = Scheduler(engine)
    long = Sampling(max_new_tokens=200, temperature=0)

    async def leave() -> int:
        stream = submitted(engine, [Request(engine.encode("Hi"), None, long)], None)
        first = await anext(stream)
        await stream.aclose()  # a client disconnecting
        return first.completion_tokens

    assert asyncio.run(leave()) == 1
    assert engine._scheduler.idle.wait(timeout=30)
    assert len(recorder.events) < 100  # its row left the batch far short of 200 tokens
