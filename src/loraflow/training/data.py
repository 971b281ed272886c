"""From validated rows to token batches: chat formatting, response-only labels, length grouping.

Labels are the response tokens (and the end-of-turn token); prompt tokens are -100 so the loss
ignores them. Batches are grouped by length so padding stays a few percent of token slots.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import polars as pl

IGNORE = -100
GROUP_BATCHES = 50  # sort within windows of this many batches: little padding, still random


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class EncodeStats:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    label_tokens: int = 0


@dataclass
class Batch:
    input_ids: Any  # LongTensor [B, T]
    attention_mask: Any  # LongTensor [B, T]
    labels: Any  # LongTensor [B, T]
    real_tokens: int = 0
    slots: int = 0
    label_tokens: int = field(default=0)
    position_ids: Any = None  # LongTensor [1, T] when packed: positions restart per example


def conversation(prompt: str, messages: str | None) -> list[dict[str, str]]:
    """The turns before the response: the stored chat history, or the prompt as a user turn."""
    if messages:
        return json.loads(messages)[:-1]
    return [{"role": "user", "content": prompt}]


def encode_row(
    tokenizer: Any, use_chat: bool, prompt: str, response: str, messages: str | None
) -> tuple[list[int], int]:
    """Token ids of prompt + response + end of turn, and how many of them are the prompt."""
    if use_chat:
        turns = conversation(prompt, messages)
        head = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(
            [*turns, {"role": "assistant", "content": response}], tokenize=True
        )
        head, full = _ids(head), _ids(full)
        eos = tokenizer.eos_token_id
        if eos in full[len(head) :]:  # stop after the end-of-turn token (drop a trailing "\n")
            full = full[: len(head) + full[len(head) :].index(eos) + 1]
        prefix = _common_prefix(head, full)
        return full, prefix
    head = tokenizer(prompt)["input_ids"]
    tail = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return head + tail, len(head)


def _ids(value: Any) -> list[int]:
    return list(value["input_ids"] if isinstance(value, dict) or hasattr(value, "keys") else value)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode(
    frame: pl.DataFrame, tokenizer: Any, use_chat: bool, max_length: int
) -> tuple[list[Example], EncodeStats]:
    """Encode every row; truncate to ``max_length`` and drop rows left with no response."""
    stats = EncodeStats()
    examples = []
    messages = frame["messages"] if "messages" in frame.columns else [None] * len(frame)
    for prompt, response, history in zip(frame["prompt"], frame["response"], messages, strict=True):
        stats.rows += 1
        ids, prompt_len = encode_row(tokenizer, use_chat, prompt, response, history)
        if len(ids) > max_length:
            stats.truncated += 1
            ids = ids[:max_length]
        if prompt_len >= len(ids):
            stats.dropped += 1
            continue
        labels = [IGNORE] * prompt_len + ids[prompt_len:]
        examples.append(Example(ids, labels))
        stats.tokens += len(ids)
        stats.label_tokens += len(ids) - prompt_len
    return examples, stats


def epoch_batches(
    examples: list[Example], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Indices of each batch for one epoch: shuffled, then sorted by length within windows.

    Deterministic in (seed, epoch), so a resumed run sees the same batches in the same order.
    """
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * GROUP_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(examples[i].input_ids))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], indices: list[int], pad_id: int) -> Batch:
    """Right-pad the examples at ``indices`` into one batch."""
    import torch

    rows = [examples[i] for i in indices]
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        length = len(row.input_ids)
        ids[n, :length] = torch.tensor(row.input_ids)
        labels[n, :length] = torch.tensor(row.labels)
        mask[n, :length] = 1
    real = int(mask.sum())
    return Batch(ids, mask, labels, real, ids.numel(), int((labels != IGNORE).sum()))


def pack(examples: list[Example], indices: list[int]) -> Batch:
    """The examples at ``indices`` concatenated into one row, without padding.

    Positions restart at 0 for each example, which is how the model's attention (FlashAttention
    2's variable-length kernel, or a block-diagonal mask) keeps examples apart. Each example's
    first token is never a label, so no example learns from the one before it.
    """
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for i in indices:
        row = examples[i]
        ids += row.input_ids
        labels += [IGNORE, *row.labels[1:]]
        positions += range(len(row.input_ids))
    label_tokens = sum(label != IGNORE for label in labels)
    return Batch(
        torch.tensor([ids]),
        None,
        torch.tensor([labels]),
        len(ids),
        len(ids),
        label_tokens,
        torch.tensor([positions]),
    )
