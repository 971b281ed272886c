"""Completions: checking what callers send, batching it on the backend, shaping the answers.

One code path serves the SDK (``Completion``), the ``complete`` task, batch jobs and the HTTP
service. Everything a caller sends is checked before generation starts, so a bad request gets
an InvalidRequestError naming the field and never disturbs the requests being served.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Unpack

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loraflow.backends import CompletionBackend
from loraflow.chat import chat_problem, text_problem, turns
from loraflow.errors import InvalidRequestError, LoraflowError, first_problem
from loraflow.types import (
    CompletionOutput,
    CompletionStreamOutput,
    CompletionStreamResponse,
    CompletionSyncResponse,
    GenerateOutput,
    GenerationStatistics,
    SamplingParams,
    Seed,
    TokenOutput,
)

Messages = list[dict[str, str]]


class CompletionTimeoutError(LoraflowError, TimeoutError):
    """A completion did not finish within its ``timeout``."""

    status = 504


class Params(BaseModel):
    """Sampling settings of a completion call, checked as LLM Engine's server checks them."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int | None = Field(
        20, ge=1, description="New tokens at most; None: the rest of the context window."
    )
    temperature: float = Field(0.2, ge=0, le=1)
    stop_sequences: list[str] | None = None
    return_token_log_probs: bool = False
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    seed: Seed | None = None
    timeout: float | None = Field(None, gt=0)

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("top_k needs to be strictly positive, or -1 / None to disable it")
        return value

    def sampling(self, seed_offset: int = 0, room: int | None = None) -> Any:
        """The engine's Sampling; ``room``: the context left after the prompt, the budget
        when max_new_tokens is None."""
        from loraflow.engine.generation import Sampling

        budget = self.max_new_tokens if self.max_new_tokens is not None else max(room or 1, 1)
        return Sampling(
            max_new_tokens=budget,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=None if self.top_k == -1 else self.top_k,
            seed=None if self.seed is None else self.seed + seed_offset,
            stop_sequences=tuple(self.stop_sequences or ()),
            return_token_log_probs=self.return_token_log_probs,
        )


def params(**values: Unpack[SamplingParams]) -> Params:
    """Checked Params; raises InvalidRequestError naming the first bad field."""
    try:
        return Params(**values)
    except ValidationError as exc:
        raise InvalidRequestError(first_problem(exc)) from None


def check_messages(messages: Any, field: str = "messages") -> Messages:
    """OpenAI-style chat turns (``loraflow.chat``), the last one from the user; the turns as
    ``{role, content}``. InvalidRequestError names the turn and field."""
    problem = chat_problem(messages, field, ends_with="user")
    if problem:
        raise InvalidRequestError(problem)
    return turns(messages)


def encode_input(
    backend: CompletionBackend, prompt: str | None, messages: Any, field: str = "prompt"
) -> list[int]:
    """Prompt token ids for a prompt or chat messages (exactly one of them)."""
    if (prompt is None) == (messages is None):
        raise InvalidRequestError(f"{field}: send either a prompt or messages, not both or neither")
    if messages is not None:
        return backend.encode(messages=check_messages(messages))
    if not isinstance(prompt, str):
        raise InvalidRequestError(f"{field}: must be a string (got {type(prompt).__name__})")
    if problem := text_problem(prompt, field):
        raise InvalidRequestError(problem)
    return backend.encode(prompt)


class Call:
    """One completion call resolved against its backend: its requests, checked, ready to run."""

    def __init__(
        self,
        model: str,
        inputs: Sequence[tuple[str | None, Any]],
        p: Params,
        num_generations: int = 1,
    ) -> None:
        from loraflow import backends
        from loraflow.engine import Request

        if num_generations < 1:
            raise InvalidRequestError(
                f"num_generations: must be at least 1 (got {num_generations})"
            )
        self.backend, adapter = backends.resolve(model)
        self.served = adapter or self.backend.base  # the metrics' model label
        self.params = p
        self.num_generations = num_generations
        self.requests = []
        for i, (prompt, messages) in enumerate(inputs):
            field = "prompt" if len(inputs) == 1 else f"inputs[{i}]"
            ids = encode_input(self.backend, prompt, messages, field)
            for g in range(num_generations):
                room = self.backend.context - len(ids)
                request = Request(ids, adapter, p.sampling(seed_offset=g, room=room))
                self.backend.check(request, field)
                self.requests.append(request)

    def events(self, batch: list[Any] | None = None) -> Iterator[Any]:
        """Token events of ``batch`` (default: every request) run as one batch.

        Event indexes count within the batch. Raises CompletionTimeoutError on a timeout.
        """
        started, first = time.monotonic(), True
        for event in self.backend.submit(batch or self.requests, timeout=self.params.timeout):
            self._count(event, started if first else None)
            first = False
            yield event

    async def aevents(self) -> AsyncIterator[Any]:
        """``events()`` of every request on an event loop (the HTTP service's streams)."""
        from loraflow.aio import submitted

        started, first = time.monotonic(), True
        async for event in submitted(self.backend, self.requests, self.params.timeout):
            self._count(event, started if first else None)
            first = False
            yield event

    def _count(self, event: Any, started: float | None) -> None:
        """Raise on a timeout; else record the event in the metrics (``started``: the first)."""
        from loraflow import metrics

        if event.finish_reason == "timeout":
            raise CompletionTimeoutError(
                f"timeout: the completion took longer than {self.params.timeout} s; "
                "raise timeout or lower max_new_tokens"
            )
        if started is not None:
            metrics.FIRST_TOKEN.labels(self.served).observe(time.monotonic() - started)
        if event.finished:
            metrics.TOKENS.labels(self.served).inc(event.completion_tokens)
            metrics.COMPLETIONS.labels(self.served, event.finish_reason or "stop").inc()

    def outputs(self, batch_size: int = 32) -> list[CompletionOutput]:
        """Run every request (in batches of similar length) and return one output each."""
        order = sorted(range(len(self.requests)), key=lambda i: len(self.requests[i].prompt_ids))
        results: dict[int, CompletionOutput] = {}
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = [self.requests[i] for i in chosen]
            for k, output in enumerate(_collect(self, batch)):
                results[chosen[k]] = output
        return [results[i] for i in range(len(self.requests))]


def _collect(call: Call, batch: list[Any]) -> list[CompletionOutput]:
    texts: list[list[str]] = [[] for _ in batch]
    tokens: list[list[TokenOutput]] = [[] for _ in batch]
    finals: dict[int, Any] = {}
    for event in call.events(batch):
        texts[event.index].append(event.text)
        if event.log_prob is not None:
            tokens[event.index].append(TokenOutput(token=event.token, log_prob=event.log_prob))
        if event.finished:
            finals[event.index] = event
    return [
        CompletionOutput(
            text="".join(texts[n]),
            num_prompt_tokens=len(r.prompt_ids),
            num_completion_tokens=finals[n].completion_tokens,
            tokens=tokens[n] if r.sampling.return_token_log_probs else None,
            finish_reason=finals[n].finish_reason,
        )
        for n, r in enumerate(batch)
    ]


def request_id() -> str:
    return str(uuid.uuid4())


def complete(model: str, prompt: str | None, messages: Any, p: Params) -> CompletionSyncResponse:
    """One completion, whole."""
    call = Call(model, [(prompt, messages)], p)
    return CompletionSyncResponse(request_id=request_id(), output=call.outputs()[0])


def stream(
    model: str, prompt: str | None, messages: Any, p: Params
) -> Iterator[CompletionStreamResponse]:
    """One completion as chunks: new text, the running token count, ``finished`` last.

    The request is checked (and its model loaded) before the first chunk is produced.
    """
    call = Call(model, [(prompt, messages)], p)
    return _chunks(call, request_id())


def _chunks(call: Call, rid: str) -> Iterator[CompletionStreamResponse]:
    size = len(call.requests[0].prompt_ids)
    for event in call.events():
        yield _chunk(event, rid, size)


async def achunks(call: Call) -> AsyncIterator[CompletionStreamResponse]:
    """``stream``'s chunks of a resolved call, on an event loop (the HTTP service)."""
    rid, size = request_id(), len(call.requests[0].prompt_ids)
    async for event in call.aevents():
        yield _chunk(event, rid, size)


def _chunk(event: Any, rid: str, size: int) -> CompletionStreamResponse:
    token = None
    if event.log_prob is not None:
        token = TokenOutput(token=event.token, log_prob=event.log_prob)
    return CompletionStreamResponse(
        request_id=rid,
        output=CompletionStreamOutput(
            text=event.text,
            finished=event.finished,
            num_prompt_tokens=size if event.finished else None,
            num_completion_tokens=event.completion_tokens,
            token=token,
            finish_reason=event.finish_reason,
        ),
    )


def check_inputs(inputs: Any) -> None:
    """Raise InvalidRequestError unless ``inputs`` is a non-empty list of inputs."""
    if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
        raise InvalidRequestError("inputs: send a non-empty list of prompts or message lists")


def generate(
    model: str,
    inputs: Sequence[str | Messages],
    p: Params,
    num_generations: int = 1,
    batch_size: int = 32,
) -> list[GenerateOutput]:
    """``num_generations`` completions for each input (a prompt or chat messages)."""
    check_inputs(inputs)
    if batch_size < 1:
        raise InvalidRequestError(f"batch_size: must be at least 1 (got {batch_size})")
    pairs = [(x, None) if isinstance(x, str) else (None, x) for x in inputs]
    outputs = Call(model, pairs, p, num_generations).outputs(batch_size)
    results = []
    for i in range(len(inputs)):
        mine = outputs[i * num_generations : (i + 1) * num_generations]
        results.append(
            GenerateOutput(
                generations=[o.text for o in mine],
                outputs=mine,
                statistics=GenerationStatistics(
                    input_tokens=[o.num_prompt_tokens or 0 for o in mine],
                    output_tokens=[o.num_completion_tokens for o in mine],
                ),
            )
        )
    return results
