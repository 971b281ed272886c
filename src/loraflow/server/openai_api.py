"""OpenAI-compatible routes: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``.

Streams are server-sent events ending with ``data: [DONE]``, as OpenAI's clients expect.
Temperature is limited to 0..1 like LLM Engine's (OpenAI allows up to 2).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from loraflow import completion
from loraflow.errors import InvalidRequestError
from loraflow.sdk import Model
from loraflow.server.errors import NOT_FOUND, message_of
from loraflow.types import JSON_INTEGER, ModelReference, RunUsage, Seed

router = APIRouter()
log = logging.getLogger("loraflow.server")


UNSUPPORTED = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "top_logprobs",
    "echo",
    "suffix",
    "best_of",
)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # JSON's types as the schema says
    model: ModelReference
    temperature: float = Field(1.0, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    n: Annotated[int, Field(ge=1, le=64), JSON_INTEGER] = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: Seed | None = None
    # OpenAI's (and vLLM's) settings loraflow's engine does not honour: refused, never ignored
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[Any] | None = None
    guided_grammar: str | None = None

    def refused(self) -> list[str]:
        """The settings given that would change the answer and are not supported (zero
        penalties, a text response format, tool_choice "none", best_of 1 change nothing)."""
        harmless: tuple[Any, ...] = (None, 0, {}, [], "none", {"type": "text"})
        return [
            n
            for n in UNSUPPORTED
            if getattr(self, n, None) not in harmless
            and not (n == "best_of" and getattr(self, n) == 1)
        ]

    @property
    def stream_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (``stream_options.include_usage``)."""
        return bool((self.stream_options or {}).get("include_usage"))

    def params(self, max_tokens: int | None, log_probs: bool) -> completion.Params:
        if refused := self.refused():
            raise InvalidRequestError(
                f"{refused[0]}: not supported by loraflow; leave it unset"
                + (f" (also given: {', '.join(refused[1:])})" if refused[1:] else "")
            )
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return completion.params(
            max_new_tokens=max_tokens,  # None: the rest of the context window, as OpenAI
            temperature=self.temperature,
            top_p=self.top_p,
            stop_sequences=stop,
            seed=self.seed,
            return_token_log_probs=log_probs,
        )


class CompletionBody(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1), JSON_INTEGER] | None = 16
    logprobs: Annotated[int, Field(ge=0), JSON_INTEGER] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1), JSON_INTEGER] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def turn(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):  # content parts: only text is understood
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatBody(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1), JSON_INTEGER] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1), JSON_INTEGER] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0), JSON_INTEGER] | None = None


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


def _usage(prompt: int, completion_tokens: int) -> dict[str, int]:
    return RunUsage(prompt_tokens=prompt, completion_tokens=completion_tokens).model_dump()


def _calls(body: CompletionBody | ChatBody) -> completion.Call:
    if isinstance(body, ChatBody):
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = body.params(max_tokens, bool(body.logprobs))
        turns = [m.turn() for m in body.messages]
        return completion.Call(body.model, [(None, turns)], params, body.n)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise InvalidRequestError("prompt: send a prompt or a list of prompts")
    params = body.params(body.max_tokens, body.logprobs is not None)
    return completion.Call(body.model, [(p, None) for p in prompts], params, body.n)


@router.post("/v1/completions", responses=NOT_FOUND)
async def completions(body: CompletionBody) -> Any:
    call = await run_in_threadpool(_calls, body)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
    if body.stream:
        return _stream(call, head, _text_choice_delta, body.stream_usage)
    outputs = await run_in_threadpool(call.outputs)
    choices = [
        {
            "index": i,
            "text": o.text,
            "finish_reason": _finish(o.finish_reason),
            "logprobs": None
            if o.tokens is None
            else {
                "tokens": [t.token for t in o.tokens],
                "token_logprobs": [t.log_prob for t in o.tokens],
                "top_logprobs": None,
                "text_offset": _offsets([t.token for t in o.tokens]),
            },
        }
        for i, o in enumerate(outputs)
    ]
    return head | {"choices": choices, "usage": _usage_of(call, outputs)}


@router.post("/v1/chat/completions", responses=NOT_FOUND)
async def chat_completions(body: ChatBody) -> Any:
    call = await run_in_threadpool(_calls, body)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "chat.completion", "created": created, "model": body.model}
    if body.stream:
        chunk_head = head | {"object": "chat.completion.chunk"}
        return _stream(call, chunk_head, _chat_choice_delta, body.stream_usage)
    outputs = await run_in_threadpool(call.outputs)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": o.text},
            "finish_reason": _finish(o.finish_reason),
            "logprobs": None
            if o.tokens is None
            else {
                "content": [
                    {
                        "token": t.token,
                        "logprob": t.log_prob,
                        "bytes": list(t.token.encode()),
                        "top_logprobs": [],
                    }
                    for t in o.tokens
                ]
            },
        }
        for i, o in enumerate(outputs)
    ]
    return head | {"choices": choices, "usage": _usage_of(call, outputs)}


def _prompt_tokens(call: completion.Call) -> int:
    """Tokens of the distinct prompts (each counted once, however many generations)."""
    return sum(len(r.prompt_ids) for r in call.requests[:: call.num_generations])


def _usage_of(call: completion.Call, outputs: list[Any]) -> dict[str, int]:
    return _usage(_prompt_tokens(call), sum(o.num_completion_tokens for o in outputs))


def _offsets(tokens: list[str]) -> list[int]:
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return offsets


def _text_choice_delta(event: Any, first: bool) -> dict[str, Any]:
    logprobs = None
    if event.log_prob is not None:
        logprobs = {"tokens": [event.token], "token_logprobs": [event.log_prob]}
    return {
        "index": event.index,
        "text": event.text,
        "finish_reason": _finish(event.finish_reason) if event.finished else None,
        "logprobs": logprobs,
    }


def _chat_choice_delta(event: Any, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": event.text}
    if first:
        delta["role"] = "assistant"
    choice: dict[str, Any] = {
        "index": event.index,
        "delta": delta,
        "finish_reason": _finish(event.finish_reason) if event.finished else None,
        "logprobs": None,
    }
    if event.log_prob is not None:
        token = {"token": event.token, "logprob": event.log_prob, "top_logprobs": []}
        choice["logprobs"] = {"content": [token]}
    return choice


def _stream(call: completion.Call, head: dict[str, Any], choice: Any, usage: bool = False) -> Any:
    """Server-sent events of OpenAI's chunks; an error after the start is an error event."""

    async def events() -> AsyncIterator[dict[str, str]]:
        seen: set[int] = set()
        tokens = 0
        try:
            async for event in call.aevents():
                body = head | {"choices": [choice(event, event.index not in seen)]}
                seen.add(event.index)
                tokens += 1
                yield {"data": json.dumps(body)}
        except Exception as exc:
            log.error("completion stream failed: %s", exc, exc_info=exc)
            yield {"data": json.dumps({"error": {"message": message_of(exc), "type": "error"}})}
        if usage:
            totals = _usage(_prompt_tokens(call), tokens)
            yield {"data": json.dumps(head | {"choices": [], "usage": totals})}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), ping=15)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loraflow"


@router.get("/v1/models")
def list_models() -> Any:
    data = [_card(m) for m in Model.list().model_endpoints]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model:path}", responses=NOT_FOUND)
def get_model(model: Annotated[ModelReference, Path()]) -> Any:
    return _card(Model.get(model))


def _card(m: Any) -> ModelCard:
    created = int(m.created_at.timestamp()) if m.created_at else 0
    return ModelCard(id=m.name, created=created, owned_by="loraflow" if m.fine_tuned else "base")
