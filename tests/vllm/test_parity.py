"""The same scenario on both backends: loraflow's engine and a real vLLM server.

Greedy texts, stop sequences, streaming deltas, token counts, log probabilities, chat with
history and many generations agree; the published clients cannot tell the backends apart."""

from __future__ import annotations

from typing import Any

import pytest

from loraflow import Completion, Model
from tests.vllm.conftest import TINY, use_engine, use_vllm

PROMPTS = [
    "Where is my order?",
    "How do I reset my password?",
    "Can I change the shipping address after ordering?",
    "My package arrived damaged, what now?",
    "Do you ship to Canada?",
]
CHAT = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Hi, my order is late."},
    {"role": "assistant", "content": "Sorry to hear that. What is the order number?"},
    {"role": "user", "content": "It is 12345."},
]


def scenario(model: str) -> dict[str, Any]:
    """Everything the parity suite compares, from one backend."""
    out: dict[str, Any] = {}
    out["greedy"] = [
        Completion.create(model, p, max_new_tokens=24, temperature=0).output.text for p in PROMPTS
    ]
    logged = Completion.create(
        model, PROMPTS[0], max_new_tokens=12, temperature=0, return_token_log_probs=True
    ).output
    out["tokens"] = [(t.token, t.log_prob) for t in logged.tokens or []]
    out["log_text"] = logged.text
    stopped = Completion.create(
        model, PROMPTS[1], max_new_tokens=24, temperature=0, stop_sequences=[" the", "."]
    ).output
    out["stop"] = (stopped.text, stopped.finish_reason, stopped.num_completion_tokens)
    chunks = list(
        Completion.create(model, PROMPTS[2], max_new_tokens=24, temperature=0, stream=True)
    )
    out["stream"] = (
        "".join(c.output.text for c in chunks if c.output),
        chunks[-1].output.num_completion_tokens,
        chunks[-1].output.finish_reason,
        sum(1 for c in chunks if c.output and c.output.finished),
    )
    sync = Completion.create(model, PROMPTS[2], max_new_tokens=24, temperature=0).output
    out["sync"] = (sync.text, sync.num_completion_tokens, sync.num_prompt_tokens)
    out["chat"] = Completion.create(model, messages=CHAT, max_new_tokens=16, temperature=0).output
    out["generate"] = Completion.generate(
        model, PROMPTS[:2], num_generations=3, max_new_tokens=10, temperature=0.9, seed=7
    )
    return out


def test_the_engine_and_vllm_agree_on_the_tiny_model(
    on_vllm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_engine(monkeypatch)
    engine = scenario(TINY)
    use_vllm(monkeypatch)
    vllm = scenario(TINY)

    assert vllm["greedy"] == engine["greedy"]  # 5 of 5, float32 on both
    assert vllm["log_text"] == engine["log_text"]
    assert [t for t, _ in vllm["tokens"]] == [t for t, _ in engine["tokens"]]
    assert "".join(t for t, _ in vllm["tokens"]) == vllm["log_text"]
    for (_, ours), (_, theirs) in zip(engine["tokens"], vllm["tokens"], strict=True):
        assert theirs == pytest.approx(ours, abs=2e-3)
    assert vllm["stop"] == engine["stop"]
    assert vllm["stream"] == engine["stream"]
    assert vllm["stream"][3] == 1  # one final chunk
    assert vllm["stream"][0] == vllm["sync"][0] and vllm["stream"][1] == vllm["sync"][1]
    assert vllm["sync"] == engine["sync"]
    assert vllm["chat"].text == engine["chat"].text
    assert vllm["chat"].num_prompt_tokens == engine["chat"].num_prompt_tokens  # same template

    # many generations: seeded sampling repeats on vLLM (its sampler is not the engine's)
    again = Completion.generate(
        TINY, PROMPTS[:2], num_generations=3, max_new_tokens=10, temperature=0.9, seed=7
    )
    assert [g.generations for g in again] == [g.generations for g in vllm["generate"]]
    assert all(len(g.generations) == 3 for g in vllm["generate"])
    assert all(n == 10 or n <= 10 for g in vllm["generate"] for n in g.statistics.output_tokens)
    assert Model.get(TINY).inference_framework == "vllm"


def test_bad_input_is_refused_by_loraflow_before_vllm(on_vllm: str) -> None:
    from loraflow.errors import InvalidRequestError, NotFoundError

    with pytest.raises(InvalidRequestError, match="context window"):
        Completion.create(TINY, "word " * 2000, max_new_tokens=4)
    with pytest.raises(InvalidRequestError, match="max_new_tokens"):
        Completion.create(TINY, "Hi", max_new_tokens=5000)
    with pytest.raises(NotFoundError):
        Completion.create("no-such-model", "Hi")
    # and it keeps serving
    assert Completion.create(TINY, "Hi", max_new_tokens=4, temperature=0).output.text
