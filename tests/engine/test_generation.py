"""The completion engine on the tiny model: determinism, stops, streaming, log probs, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraflow.engine import Engine, Request, Sampling
from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.training.loop import Trainer
from tests.training.conftest import RecordingReporter

GREEDY = Sampling(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("tiny-llama-test")


def run(
    engine: Engine, prompt: str, sampling: Sampling, adapter: str | None = None
) -> tuple[str, list]:
    events = list(engine.stream([Request(engine.encode(prompt), adapter, sampling)]))
    return "".join(e.text for e in events), events


def test_greedy_is_deterministic_and_padding_invariant(engine: Engine) -> None:
    alone, _ = run(engine, "How do I reset my password?", GREEDY)
    assert alone == run(engine, "How do I reset my password?", GREEDY)[0]
    batch = [
        Request(engine.encode("Hi"), None, GREEDY),
        Request(engine.encode("How do I reset my password?"), None, GREEDY),
    ]
    events = list(engine.stream(batch))
    assert "".join(e.text for e in events if e.index == 1) == alone  # left padding changes nothing


def test_stream_deltas_add_up_and_the_last_one_finishes(engine: Engine) -> None:
    hot = Sampling(max_new_tokens=24, temperature=1.0, seed=11)
    text, events = run(engine, "Where is my order?", hot)
    ids = [e.token_id for e in events]
    assert text == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert [e.finished for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1].finish_reason in {"length", "stop"}
    assert events[-1].completion_tokens == len(events)


def test_stop_sequences_cut_the_text_even_across_tokens(engine: Engine) -> None:
    varied = Sampling(max_new_tokens=24, temperature=1.0, seed=5)  # seeded: the same tokens again
    text, events = run(engine, "How can I get a refund?", varied)
    pieces = [e.token for e in events]
    # a stop string made of the end of one token and the start of the next, past the start
    i = next(k for k in range(3, len(pieces) - 1) if pieces[k].strip() and pieces[k + 1].strip())
    stop = pieces[i].strip()[-1] + pieces[i + 1].strip()[0]
    assert stop in text and text.index(stop) > 0
    with_stop = Sampling(max_new_tokens=24, temperature=1.0, seed=5, stop_sequences=(stop,))
    cut, stopped = run(engine, "How can I get a refund?", with_stop)
    assert cut == text[: text.index(stop)]
    assert stopped[-1].finish_reason == "stop"
    assert all(stop not in e.text for e in stopped)


def test_log_probs_match_the_model(engine: Engine) -> None:
    prompt_ids = engine.encode("Can I pay with PayPal?")
    sampling = Sampling(max_new_tokens=8, temperature=0, return_token_log_probs=True)
    events = list(engine.stream([Request(prompt_ids, None, sampling)]))
    tokens = [e.token_id for e in events]
    ids = torch.tensor([prompt_ids + tokens])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0]
    expected = torch.log_softmax(logits.float(), -1)
    for k, (event, token) in enumerate(zip(events, tokens, strict=True)):
        row = expected[len(prompt_ids) - 1 + k]
        assert event.log_prob == pytest.approx(float(row[token]), abs=1e-4)
        assert token == int(row.argmax())  # greedy took the most likely token


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    hot = Sampling(max_new_tokens=16, temperature=1.0, seed=7)
    first, _ = run(engine, "Hello", hot)
    assert run(engine, "Hello", hot)[0] == first
    others = {run(engine, "Hello", Sampling(16, 1.0, seed=s))[0] for s in range(8, 12)}
    assert others - {first}


def test_top_k_one_and_tiny_top_p_are_greedy(engine: Engine) -> None:
    greedy, _ = run(engine, "Track my order", GREEDY)
    assert run(engine, "Track my order", Sampling(24, 1.0, top_k=1, seed=3))[0] == greedy
    assert run(engine, "Track my order", Sampling(24, 1.0, top_p=1e-6, seed=3))[0] == greedy


def test_timeout_ends_the_request(engine: Engine) -> None:
    events = list(engine.stream([Request(engine.encode("Hi"), None, Sampling(200, 0))], timeout=0))
    assert len(events) == 1 and events[0].finish_reason == "timeout"


def test_context_window_and_unknown_adapter_are_refused(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="context window"):
        list(engine.stream([Request(engine.encode("Hi"), None, Sampling(max_new_tokens=10_000))]))
    with pytest.raises(NotFoundError, match="not loaded"):
        list(engine.stream([Request(engine.encode("Hi"), "nope", GREEDY)]))


def test_adapters_change_the_output_and_mix_in_one_batch(tiny_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = Trainer(tiny_plan(epochs=3), RecordingReporter()).run()
    engine = Engine("tiny-llama-test")
    base_text, _ = run(engine, "How do I reset my password?", GREEDY)
    engine.add_adapter("support", result.adapter_dir)
    tuned_text, _ = run(engine, "How do I reset my password?", GREEDY, adapter="support")
    assert run(engine, "How do I reset my password?", GREEDY)[0] == base_text  # base still served
    assert tuned_text != base_text
    mixed = list(
        engine.stream(
            [
                Request(engine.encode("How do I reset my password?"), None, GREEDY),
                Request(engine.encode("How do I reset my password?"), "support", GREEDY),
            ]
        )
    )
    assert "".join(e.text for e in mixed if e.index == 0) == base_text
    assert "".join(e.text for e in mixed if e.index == 1) == tuned_text
