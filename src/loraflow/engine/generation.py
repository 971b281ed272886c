"""Batched token generation over one base model with LoRA adapters chosen per request.

A decode loop of our own rather than ``generate``: each request in a batch keeps its own
sampling settings (temperature, top-k, top-p, seed), stop sequences, token budget and log
probabilities, and the loop yields every new token as it is chosen, which is what streaming
and early stopping need. Rows are left-padded so one KV cache serves the whole batch.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class Sampling:
    """How to pick tokens for one request. temperature 0 is greedy."""

    max_new_tokens: int = 20
    temperature: float = 0.2
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop_sequences: tuple[str, ...] = ()
    return_token_log_probs: bool = False


@dataclass
class Request:
    """One generation: prompt tokens, the adapter to apply (None: the base) and sampling.

    ``deadline`` (a ``time.monotonic()`` value) ends it with finish reason "timeout";
    setting ``cancelled`` drops it from its batch at the next step, with no further events.
    """

    prompt_ids: list[int]
    adapter: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    deadline: float | None = None
    cancelled: threading.Event | None = None


@dataclass
class TokenEvent:
    """One step of one request: the text it adds (possibly empty) and whether it is done."""

    index: int
    text: str
    token: str | None
    log_prob: float | None
    finished: bool
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_id: int | None = None


class _TextState:
    """Turns a request's tokens into text deltas, holding back a possible stop sequence.

    Each token's own text is what it adds to the decoded whole (special tokens add nothing),
    so the token texts of a request join to its full text, stop sequence included. Decoding is
    incremental, as vLLM's detokenizer does it: each step decodes a few tokens around the new
    one (from ``prefix`` on) instead of the whole output, so a long generation costs linear,
    not quadratic, time; stop sequences are looked for only where new text can complete one.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.text = ""  # the decoded whole, up to the last complete character
        self.prefix = 0  # ids[prefix:read] decode to the end of ``text``; the context of the next
        self.read = 0
        self.sent = 0  # characters of the text already emitted
        self.stopped = False  # a stop sequence was hit

    def _decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def push(self, token_id: int) -> tuple[str, str, str | None]:
        """Add a token; return (safe new text, the token's own text, stop sequence hit)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        # an incomplete multi-byte character decodes as U+FFFD: wait for the rest of it
        piece = ""
        if len(after) > len(before) and not after.endswith("\ufffd"):
            piece = after[len(before) :]
            self.text += piece
            self.prefix, self.read = self.read, len(self.ids)
        text = self.text
        for stop in self.stops:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                delta, self.sent, self.stopped = text[self.sent : at], at, True
                return delta, piece, stop
        safe = len(text)
        for stop in self.stops:  # keep back a tail that could still become a stop sequence
            for k in range(min(len(stop) - 1, safe - self.sent), 0, -1):
                if text.endswith(stop[:k], 0, safe):
                    safe -= k
                    break
        delta, self.sent = text[self.sent : safe], max(self.sent, safe)
        return delta, piece, None

    def flush(self) -> str:
        """The held-back text once the request ends without a stop sequence (a character
        still incomplete at the end comes out as decoding gives it)."""
        before = self._decode(self.ids[self.prefix : self.read])
        self.text += self._decode(self.ids[self.prefix :])[len(before) :]
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Pick the next token from one row of logits under ``sampling``."""
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.float() / sampling.temperature
    if sampling.top_k and sampling.top_k > 0:
        kth = torch.topk(scores, min(sampling.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        cut = cumulative - torch.softmax(ordered, -1) > sampling.top_p  # keep the first over p
        scores[order[cut]] = -math.inf
    probs = torch.softmax(scores, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token that ends a generation: the tokenizer's and the generation config's."""
    configured = _as_list(getattr(model.generation_config, "eos_token_id", None))
    return {tokenizer.eos_token_id} | set(configured)


@dataclass
class _Row:
    key: int
    request: Request
    text: _TextState
    generator: torch.Generator | None
    count: int = 0
    done: bool = False


class Decoder:
    """A batch that requests join and leave between steps (continuous batching).

    Joining requests are prefilled as a batch of their own, then their KV cache is merged
    into the running one (both left-padded to one length); finished and cancelled rows are
    dropped from the cache, and columns no row needs any more are trimmed.
    ``forward(requests, **inputs)`` runs the model for those rows (and picks their adapters).
    """

    def __init__(self, forward: Any, tokenizer: Any, device: Any, eos: set[int]) -> None:
        self.forward = forward
        self.tokenizer = tokenizer
        self.device = device
        self.eos = eos
        pad = tokenizer.pad_token_id
        self.pad = tokenizer.eos_token_id if pad is None else pad
        self.rows: list[_Row] = []
        self.failures: list[tuple[int, Exception]] = []  # rows whose own work raised
        self.past: Any = None
        self.mask: torch.Tensor | None = None  # [rows, cached length]
        self.last: torch.Tensor | None = None  # [rows, 1]: the next input token
        self.pos: torch.Tensor | None = None  # [rows, 1]: its position

    def admit(self, keyed: list[tuple[int, Request]]) -> list[TokenEvent]:
        """Prefill new requests, join them to the batch; returns their first tokens' events.

        A request whose own work raises (its sampler, its text) leaves the batch and is put in
        ``failures``; the others go on. An exception from here is a fault of the whole call.
        """
        rows = []
        for k, r in keyed:  # a request that cannot start fails alone
            try:
                text = _TextState(self.tokenizer, r.sampling.stop_sequences)
                rows.append(_Row(k, r, text, _generator(r, self)))
            except Exception as exc:
                self.failures.append((k, exc))
        if not rows:
            return []
        width = max(len(row.request.prompt_ids) for row in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, row in enumerate(rows):
            ids[n, width - len(row.request.prompt_ids) :] = torch.tensor(row.request.prompt_ids)
            mask[n, width - len(row.request.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            out = self.forward(
                [row.request for row in rows],
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
        self._join(rows, out.past_key_values, mask, mask.sum(-1, keepdim=True))
        events = self._choose(rows, out.logits[:, -1, :], len(self.rows) - len(rows))
        self._drop_finished()
        return events

    def step(self) -> list[TokenEvent]:
        """One decoding step for every row; drops the rows that finished."""
        assert self.mask is not None and self.last is not None and self.pos is not None
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.device)
        mask = torch.cat([self.mask, ones], 1)
        with torch.inference_mode():
            out = self.forward(
                [row.request for row in self.rows],
                input_ids=self.last,
                attention_mask=mask,
                position_ids=self.pos,
                past_key_values=self.past,
                use_cache=True,
                logits_to_keep=1,
            )
        self.past, self.mask, self.pos = out.past_key_values, mask, self.pos + 1
        events = self._choose(self.rows, out.logits[:, -1, :], 0)
        self._drop_finished()
        return events

    def _choose(self, rows: list[_Row], logits: torch.Tensor, offset: int) -> list[TokenEvent]:
        now = time.monotonic()
        events = []
        for n, row in enumerate(rows):
            r = row.request
            if r.cancelled is not None and r.cancelled.is_set():
                row.done = True
                continue
            expired = r.deadline is not None and now > r.deadline
            try:
                token = choose(logits[n], r.sampling, row.generator)
                row.count += 1
                is_eos = token in self.eos
                event = _event(row.key, token, logits[n], r, row.text, row.count, is_eos, expired)
            except Exception as exc:  # this row's sampling or decoding: it leaves, alone
                self.failures.append((row.key, exc))
                row.done = True
                continue
            events.append(event)
            row.done = _finished(is_eos, row.text, row.count, r, expired)
            assert self.last is not None
            self.last[offset + n, 0] = token
        return events

    def _join(self, rows: list[_Row], past: Any, mask: torch.Tensor, pos: torch.Tensor) -> None:
        last = torch.full((len(rows), 1), self.pad, dtype=torch.long, device=self.device)
        if not self.rows:
            self.rows, self.past, self.mask, self.last, self.pos = rows, past, mask, last, pos
            return
        assert self.mask is not None and self.last is not None and self.pos is not None
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.past.layers, past.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat(
                [_left_pad(mine.values, width), _left_pad(theirs.values, width)]
            )
        self.mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self.last = torch.cat([self.last, last])
        self.pos = torch.cat([self.pos, pos])
        self.rows = self.rows + rows

    def _drop_finished(self) -> None:
        keep = [n for n, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[n] for n in keep]
        if not keep:
            self.past = self.mask = self.last = self.pos = None
            return
        assert self.mask is not None and self.last is not None and self.pos is not None
        index = torch.tensor(keep, device=self.device)
        used = int(self.mask[index].any(0).nonzero()[0])  # columns before it serve no row
        for layer in self.past.layers:
            layer.keys = layer.keys[index, :, used:]
            layer.values = layer.values[index, :, used:]
        self.mask = self.mask[index, used:]
        self.last, self.pos = self.last[index], self.pos[index]


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)


def _event(
    n: int,
    token: int,
    logits: torch.Tensor,
    r: Request,
    text: _TextState,
    count: int,
    is_eos: bool,
    expired: bool,
) -> TokenEvent:
    log_prob = None
    if r.sampling.return_token_log_probs:
        log_prob = float(torch.log_softmax(logits.float(), -1)[token])
    delta, piece, stop = text.push(token)
    if stop is not None:
        return TokenEvent(n, delta, piece, log_prob, True, "stop", count, token)
    if is_eos or count >= r.sampling.max_new_tokens or expired:
        reason = "stop" if is_eos else "timeout" if expired else "length"
        return TokenEvent(n, delta + text.flush(), piece, log_prob, True, reason, count, token)
    return TokenEvent(n, delta, piece, log_prob, False, None, count, token)


def _finished(is_eos: bool, text: _TextState, count: int, r: Request, expired: bool) -> bool:
    return is_eos or text.stopped or count >= r.sampling.max_new_tokens or expired


def _generator(r: Request, decoder: Decoder) -> torch.Generator | None:
    if r.sampling.seed is None:
        return None
    return torch.Generator(device=decoder.device).manual_seed(r.sampling.seed)


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
