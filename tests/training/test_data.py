"""Tokenising rows into examples with response-only labels, and length-grouped batches."""

from __future__ import annotations

import json

import polars as pl
import pytest
from transformers import AutoTokenizer

from loraflow.models import prepare, resolve_model
from loraflow.training.data import IGNORE, collate, encode, epoch_batches


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(prepare(resolve_model("tiny-llama-test")))


def test_chat_rows_label_only_the_response_and_end_of_turn(tokenizer) -> None:  # type: ignore[no-untyped-def]
    frame = pl.DataFrame(
        {"prompt": ["How do I reset my password?"], "response": ["Go to Settings."]}
    )
    (example,), stats = encode(frame, tokenizer, use_chat=True, max_length=256)
    labelled = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
    ]
    assert tokenizer.decode(labelled) == "Go to Settings.<|im_end|>"
    prompt = tokenizer.decode(example.input_ids[: example.labels.index(labelled[0])])
    assert prompt.endswith("<|im_start|>assistant\n") and "reset my password" in prompt
    assert stats.label_tokens == len(labelled)


def test_chat_history_is_part_of_the_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]
    frame = pl.DataFrame(
        {
            "prompt": ["second question"],
            "response": ["second answer"],
            "messages": [json.dumps(messages)],
        }
    )
    (example,), _ = encode(frame, tokenizer, use_chat=True, max_length=256)
    text = tokenizer.decode(example.input_ids)
    assert text.index("Be brief.") < text.index("first answer") < text.index("second answer")
    labelled = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
    ]
    assert tokenizer.decode(labelled) == "second answer<|im_end|>"  # history is not trained on


def test_plain_format_without_chat_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    frame = pl.DataFrame({"prompt": ["Q: hi\nA:"], "response": [" hello"]})
    (example,), _ = encode(frame, tokenizer, use_chat=False, max_length=256)
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert example.labels[-1] == tokenizer.eos_token_id


def test_truncation_and_dropping_are_counted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    frame = pl.DataFrame(
        {"prompt": ["short", "word " * 200], "response": ["answer " * 50, "unreachable"]}
    )
    examples, stats = encode(frame, tokenizer, use_chat=True, max_length=40)
    assert (stats.rows, stats.truncated, stats.dropped) == (2, 2, 1)
    assert len(examples) == 1 and len(examples[0].input_ids) == 40


def test_epoch_batches_cover_every_example_once_and_are_reproducible(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rows = [f"question {'x ' * (i % 17)}" for i in range(103)]
    frame = pl.DataFrame({"prompt": rows, "response": ["ok"] * 103})
    examples, _ = encode(frame, tokenizer, use_chat=True, max_length=256)
    first = epoch_batches(examples, 8, seed=3, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(103))
    assert first == epoch_batches(examples, 8, seed=3, epoch=0)
    assert first != epoch_batches(examples, 8, seed=3, epoch=1)
    padded = [collate(examples, b, tokenizer.pad_token_id) for b in first]
    waste = 1 - sum(b.real_tokens for b in padded) / sum(b.slots for b in padded)
    assert waste < 0.05  # grouped by length: little padding


def test_collate_pads_right_and_masks(tokenizer) -> None:  # type: ignore[no-untyped-def]
    frame = pl.DataFrame({"prompt": ["a", "a much longer prompt here"], "response": ["b", "c"]})
    examples, _ = encode(frame, tokenizer, use_chat=True, max_length=256)
    batch = collate(examples, [0, 1], pad_id=tokenizer.pad_token_id)
    short = len(examples[0].input_ids)
    assert batch.attention_mask[0, short:].sum() == 0
    assert (batch.labels[0, short:] == IGNORE).all()
    assert batch.real_tokens == sum(len(e.input_ids) for e in examples)
