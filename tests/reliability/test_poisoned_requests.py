"""One bad request never hurts the others in its batch: it fails alone, they finish as if
it had not been there."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from loraflow.engine import Engine, Request, Sampling
from loraflow.engine.scheduler import Scheduler

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("tiny-llama-test")


def sampling(seed: int, tokens: int = 24) -> Sampling:
    return Sampling(max_new_tokens=tokens, temperature=1.0, seed=seed)


def run(scheduler: Scheduler, request: Request, out: dict[str, Any], name: str) -> None:
    try:
        out[name] = "".join(e.text for e in scheduler.submit([request]))
    except Exception as exc:  # what the caller of a poisoned request sees
        out[name] = exc


@pytest.mark.parametrize(
    "poison",
    [
        # a seed torch cannot take (the HTTP edge refuses it; the engine must survive it too)
        lambda engine: Request(engine.encode("Hi"), None, sampling(2**70)),
        # a token id outside the vocabulary: the prefill of its group raises
        lambda engine: Request([1, 10**9, 2], None, sampling(3)),
    ],
    ids=["bad-seed", "bad-token"],
)
def test_a_poisoned_request_fails_alone_and_the_batch_goes_on(engine: Engine, poison: Any) -> None:
    long = Request(engine.encode("Where is my order? It has been a week."), None, sampling(1, 40))
    short = Request(engine.encode("Cancel my plan"), None, sampling(2, 12))
    alone = {
        "long": "".join(e.text for e in engine.stream([long])),
        "short": "".join(e.text for e in engine.stream([short])),
    }
    scheduler = Scheduler(engine, window=0.3)  # requests sent together start together
    out: dict[str, Any] = {}
    first = scheduler.submit([long])
    began = next(first)  # the long request is running: the others join its batch
    threads = [
        threading.Thread(target=run, args=(scheduler, poison(engine), out, "poison")),
        threading.Thread(target=run, args=(scheduler, short, out, "short")),
    ]
    for t in threads:
        t.start()
    rest = "".join(e.text for e in first)
    for t in threads:
        t.join(timeout=120)
    assert isinstance(out["poison"], Exception)
    assert began.text + rest == alone["long"]
    assert out["short"] == alone["short"]
    # and the scheduler still serves
    assert "".join(e.text for e in scheduler.submit([short])) == alone["short"]
