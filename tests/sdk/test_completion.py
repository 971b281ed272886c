"""``Completion`` on the tiny model: parity across create, acreate and both streams; chat;
many inputs and generations; log probs; and bad input that leaves the engine serving."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from loraflow import Completion, InvalidRequestError, NotFoundError
from loraflow.completion import CompletionTimeoutError
from loraflow.engine import Request, Sampling, get_engine

MODEL = "tiny-llama-test"
SCENARIO: dict[str, Any] = {
    "prompt": "How do I reset my password?",
    "max_new_tokens": 16,
    "temperature": 0.9,
    "seed": 42,
    "return_token_log_probs": True,
}


def test_create_acreate_and_both_streams_give_the_same_text() -> None:
    whole = Completion.create(MODEL, **SCENARIO)
    chunks = list(Completion.create(MODEL, **SCENARIO, stream=True))

    async def both() -> tuple[Any, list[Any]]:
        response = await Completion.acreate(MODEL, **SCENARIO)
        stream = await Completion.acreate(MODEL, **SCENARIO, stream=True)
        return response, [c async for c in stream]

    async_whole, async_chunks = asyncio.run(both())
    text = whole.output.text
    assert text and async_whole.output.text == text
    for stream in (chunks, async_chunks):
        assert "".join(c.output.text for c in stream) == text
        assert [c.output.finished for c in stream] == [False] * (len(stream) - 1) + [True]
        assert stream[-1].output.num_completion_tokens == whole.output.num_completion_tokens
        assert stream[-1].output.num_prompt_tokens == whole.output.num_prompt_tokens
        assert [c.output.token for c in stream] == whole.output.tokens
        assert len({c.request_id for c in stream}) == 1
    assert whole.request_id != async_whole.request_id


def test_token_log_probs_match_the_model_and_join_to_the_text() -> None:
    kwargs = {"max_new_tokens": 12, "temperature": 1.0, "seed": 3, "return_token_log_probs": True}
    out = Completion.create(MODEL, "Where is my order?", **kwargs).output
    assert out.tokens is not None and len(out.tokens) == out.num_completion_tokens
    assert "".join(t.token for t in out.tokens) == out.text
    engine = get_engine(MODEL)  # the same seeded request, for its token ids
    prompt = engine.encode("Where is my order?")
    sampling = Sampling(12, 1.0, seed=3, return_token_log_probs=True)
    ids = [e.token_id for e in engine.stream([Request(prompt, None, sampling)])]
    with engine.scoring(None) as model, torch.no_grad():  # the bare base, whatever is loaded
        logits = model(input_ids=torch.tensor([prompt + ids])).logits[0].float()
    expected = torch.log_softmax(logits, -1)
    model_log_probs = [float(expected[len(prompt) - 1 + k, t]) for k, t in enumerate(ids)]
    assert [t.log_prob for t in out.tokens] == pytest.approx(model_log_probs, abs=1e-4)


def test_greedy_is_deterministic_and_stop_sequences_are_cut() -> None:
    greedy = Completion.create(MODEL, "Can I pay with PayPal?", 24, 0.0).output
    assert Completion.create(MODEL, "Can I pay with PayPal?", 24, 0.0).output == greedy
    sampled = {"max_new_tokens": 24, "temperature": 1.0, "seed": 5, "return_token_log_probs": True}
    first = Completion.create(MODEL, "Can I pay with PayPal?", **sampled).output
    assert first.tokens is not None
    pieces = [t.token for t in first.tokens]
    k = next(
        i for i in range(2, len(pieces) - 1) if pieces[i][-1:].strip() and pieces[i + 1][:1].strip()
    )
    stop = pieces[k][-1] + pieces[k + 1][0]  # the end of one token and the start of the next
    cut = Completion.create(MODEL, "Can I pay with PayPal?", **sampled, stop_sequences=[stop])
    assert cut.output.text == first.text[: first.text.index(stop)]
    assert cut.output.finish_reason == "stop"


def test_chat_messages_with_a_system_turn_and_history() -> None:
    messages = [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Where is my order?"},
    ]
    chat = Completion.create(MODEL, messages=messages, max_new_tokens=8, temperature=0)
    alone = Completion.create(MODEL, messages=messages[-1:], max_new_tokens=8, temperature=0)
    prompt = Completion.create(MODEL, "Where is my order?", max_new_tokens=8, temperature=0)
    assert chat.output.num_prompt_tokens > alone.output.num_prompt_tokens
    assert prompt.output == alone.output  # a prompt is one user turn of the chat template


def test_generate_many_inputs_with_many_generations() -> None:
    inputs = ["Hi", [{"role": "user", "content": "Track my order"}], "Cancel my plan please"]
    results = Completion.generate(
        MODEL, inputs, num_generations=3, max_new_tokens=6, temperature=1.0, seed=1
    )
    assert len(results) == 3
    for result in results:
        assert len(result.generations) == len(result.outputs) == 3
        assert result.statistics.output_tokens == [o.num_completion_tokens for o in result.outputs]
        assert len(set(result.statistics.input_tokens)) == 1
    assert len(set(results[0].generations)) > 1  # seeds seed+0, seed+1, seed+2 differ
    one = Completion.create(MODEL, "Hi", 6, 1.0, seed=1).output.text
    assert results[0].generations[0] == one  # batching changes nothing
    again = Completion.generate(MODEL, inputs, 3, 6, 1.0, seed=1, batch_size=2)
    assert [r.generations for r in again] == [r.generations for r in results]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "no-such-model"}, None),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 100_000}, "max_new_tokens"),
        ({"prompt": "word " * 5000}, "prompt"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"prompt": None, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"prompt": None, "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"prompt": None, "messages": []}, "messages"),
        ({"prompt": None, "messages": [{"role": "assistant", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}]}, "prompt"),
        ({"model": "a/b/c"}, "model"),
    ],
)
def test_bad_input_names_the_field_and_the_engine_keeps_serving(
    kwargs: dict[str, Any], field: str | None
) -> None:
    request = {"model": MODEL, "prompt": "Hi", "max_new_tokens": 4} | kwargs
    error = NotFoundError if field is None else InvalidRequestError
    with pytest.raises(error) as caught:
        Completion.create(**request)
    if field is not None:
        assert str(caught.value).startswith(field), caught.value
    else:
        assert "no-such-model" in str(caught.value)
    with pytest.raises(error):  # a stream is checked before its first chunk
        Completion.create(**request, stream=True)
    assert Completion.create(MODEL, "Hi", 4, 0).output.num_completion_tokens >= 1


def test_timeout_raises() -> None:
    with pytest.raises(CompletionTimeoutError, match="timeout"):
        Completion.create(MODEL, "Hi", 400, 0, timeout=1e-9)
    with pytest.raises(CompletionTimeoutError):
        list(Completion.create(MODEL, "Hi", 400, 0, timeout=1e-9, stream=True))


def test_leaving_an_async_stream_early_frees_the_engine() -> None:
    async def first_chunk() -> str:
        stream = await Completion.acreate(MODEL, "Hi", 200, 0, stream=True)
        async for chunk in stream:
            await stream.aclose()
            return chunk.output.text
        return ""

    asyncio.run(first_chunk())
    # the engine's lock is free again: a new request completes
    assert Completion.create(MODEL, "Hi", 4, 0, timeout=30).output.num_completion_tokens >= 1
