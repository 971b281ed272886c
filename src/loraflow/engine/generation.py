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
from collections.abc import Iterator
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
    so the token texts of a request join to its full text, stop sequence included.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already emitted
        self.decoded = 0  # characters already attributed to a token
        self.stopped = False  # a stop sequence was hit

    def push(self, token_id: int) -> tuple[str, str, str | None]:
        """Add a token; return (safe new text, the token's own text, stop sequence hit)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # an incomplete multi-byte character decodes as U+FFFD: wait for the rest of it
        whole = len(text.rstrip("\ufffd")) if text.endswith("\ufffd") else len(text)
        piece, self.decoded = text[self.decoded : whole], max(self.decoded, whole)
        for stop in self.stops:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                delta, self.sent, self.stopped = text[self.sent : at], at, True
                return delta, piece, stop
        safe = whole
        for stop in self.stops:  # keep back a tail that could still become a stop sequence
            for k in range(min(len(stop) - 1, safe - self.sent), 0, -1):
                if text[safe - k : safe] == stop[:k]:
                    safe -= k
                    break
        delta, self.sent = text[self.sent : safe], max(self.sent, safe)
        return delta, piece, None

    def flush(self) -> str:
        """The held-back text once the request ends without a stop sequence."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta, self.sent = text[self.sent :], len(text)
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


def generate(
    model: Any,
    tokenizer: Any,
    requests: list[Request],
    *,
    adapter_names: list[str] | None = None,
) -> Iterator[TokenEvent]:
    """Generate for ``requests`` as one batch, yielding a TokenEvent per request per step.

    ``adapter_names`` (peft's per-row adapters, ``BASE_ADAPTER`` for none) mixes adapters in
    one batch; without it the model runs with whatever adapter is active.

    Each request ends on its end-of-sequence token, a stop sequence (cut from the text), its
    token budget, its deadline (finish reason "timeout"), or silently when cancelled.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = {tokenizer.eos_token_id} | set(
        _as_list(getattr(model.generation_config, "eos_token_id", None))
    )
    width = max(len(r.prompt_ids) for r in requests)
    ids = torch.full((len(requests), width), pad, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for n, r in enumerate(requests):
        ids[n, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[n, width - len(r.prompt_ids) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    extra: dict[str, Any] = {} if adapter_names is None else {"adapter_names": adapter_names}
    generators = [_generator(r.sampling.seed, device) for r in requests]
    texts = [_TextState(tokenizer, r.sampling.stop_sequences) for r in requests]
    done = [False] * len(requests)
    counts = [0] * len(requests)
    past = None
    step_ids, step_pos = ids, positions
    with torch.inference_mode():
        while not all(done):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                past_key_values=past,
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :]
            now = time.monotonic()
            chosen = []
            for n, r in enumerate(requests):
                if r.cancelled is not None and r.cancelled.is_set():
                    done[n] = True
                if done[n]:
                    chosen.append(pad)
                    continue
                expired = r.deadline is not None and now > r.deadline
                token = choose(logits[n], r.sampling, generators[n])
                chosen.append(token)
                counts[n] += 1
                yield _event(n, token, logits[n], r, texts[n], counts[n], token in eos, expired)
                done[n] = _finished(token in eos, texts[n], counts[n], r, expired)
            if all(done):
                break
            step_ids = torch.tensor(chosen, device=device).unsqueeze(1)
            mask = torch.cat(
                [mask, torch.ones((len(requests), 1), dtype=mask.dtype, device=device)], 1
            )
            step_pos = step_pos[:, -1:] + 1


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


def _generator(seed: int | None, device: Any) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
