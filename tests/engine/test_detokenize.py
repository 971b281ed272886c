"""Incremental detokenizing: the same text, deltas, token texts and stop as decoding the whole
output every step (what the engine did before), at linear cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loraflow.engine.generation import _TextState

# multi-byte characters the tiny tokenizer splits into byte tokens, newlines, a stop at the end
TEXT = (
    'Go to Settings > Security and choose "Reset password". Café, naïve, 12 €, ✓ done 👍.\n'
    "Open Orders in your account and select the order; the carrier link is under Shipment.\n"
)


class FullDecode:
    """The engine's text state before: decode the whole output at every token (quadratic)."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.stops = tokenizer, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.sent = self.decoded = 0
        self.stopped = False

    def push(self, token_id: int) -> tuple[str, str, str | None]:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        whole = len(text.rstrip("\ufffd")) if text.endswith("\ufffd") else len(text)
        piece, self.decoded = text[self.decoded : whole], max(self.decoded, whole)
        for stop in self.stops:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                delta, self.sent, self.stopped = text[self.sent : at], at, True
                return delta, piece, stop
        safe = whole
        for stop in self.stops:
            for k in range(min(len(stop) - 1, safe - self.sent), 0, -1):
                if text[safe - k : safe] == stop[:k]:
                    safe -= k
                    break
        delta, self.sent = text[self.sent : safe], max(self.sent, safe)
        return delta, piece, None

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta, self.sent = text[self.sent :], len(text)
        return delta


class Counting:
    """A tokenizer that counts the token ids it decodes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.decoded += len(ids)
        text: str = self.tokenizer.decode(ids, **kwargs)
        return text


@pytest.fixture(scope="module")
def tokenizer(models_dir: Path) -> Any:
    from transformers import AutoTokenizer

    from loraflow.models import prepare, resolve_model
    from loraflow.settings import reset

    reset()
    return AutoTokenizer.from_pretrained(prepare(resolve_model("tiny-llama-test")))


def run(state: Any, ids: list[int]) -> tuple[str, list[str], str | None]:
    """Feed ``ids`` as generation would: (text sent, token texts, stop hit)."""
    sent, pieces = [], []
    for token in ids:
        delta, piece, stop = state.push(token)
        sent.append(delta)
        pieces.append(piece)
        if stop is not None:
            return "".join(sent), pieces, stop
    return "".join(sent) + state.flush(), pieces, None


@pytest.mark.parametrize("stops", [(), ("carrier link",), ("👍", "Reset"), ("never there",)])
def test_the_same_text_token_texts_and_stop_as_decoding_it_whole(
    tokenizer: Any, stops: tuple[str, ...]
) -> None:
    ids = tokenizer.encode(TEXT * 3, add_special_tokens=False)
    new, old = run(_TextState(tokenizer, stops), ids), run(FullDecode(tokenizer, stops), ids)
    assert new[0] == old[0] and new[2] == old[2]
    assert "".join(new[1]) == "".join(old[1])  # the token texts join to the same whole


def test_a_2000_token_generation_with_a_stop_at_its_end_costs_linear_decoding(
    tokenizer: Any,
) -> None:
    ids: list[int] = []
    while len(ids) < 2000:
        ids += tokenizer.encode(TEXT, add_special_tokens=False)
    ids += tokenizer.encode("THE END and more", add_special_tokens=False)
    counting = Counting(tokenizer)
    new = run(_TextState(counting, ("THE END",)), ids)
    assert new == run(FullDecode(tokenizer, ("THE END",)), ids)
    assert new[2] == "THE END" and new[0].endswith("Shipment.\n")
    steps = len(new[1])  # a few tokens decoded a step; decoding the whole is ~steps²/2
    assert steps > 2000 and counting.decoded < 16 * steps


def test_special_tokens_and_a_character_split_across_tokens(tokenizer: Any) -> None:
    ids = [tokenizer.bos_token_id, *tokenizer.encode("👍 ok", add_special_tokens=False)]
    assert run(_TextState(tokenizer, ()), ids)[0] == run(FullDecode(tokenizer, ()), ids)[0]
    assert run(_TextState(tokenizer, ()), ids)[0] == "👍 ok"
