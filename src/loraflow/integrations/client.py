"""Where the integrations' models run: in this process (the SDK), or behind a remote
``loraflow serve`` (its OpenAI-compatible routes), chosen by ``LORAFLOW_BASE_URL``.

Both sides take a prompt or chat messages and the same sampling settings, and give the text
with its token counts; streams yield text pieces, then one ``Reply`` with the whole text and
the counts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from loraflow.chat import prompt_or_chat
from loraflow.errors import InvalidRequestError, LoraflowError, NotFoundError, UnavailableError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request; temperature 0 is greedy."""

    max_tokens: int = 256
    temperature: float = 0.2
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    timeout: float = 300.0


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True)
class Request:
    """A prompt, or chat messages (``of``: a lone user turn as a prompt, ``prompt_or_chat``)."""

    prompt: str | None = None
    messages: Messages | None = None

    @classmethod
    def of(cls, messages: Messages) -> Request:
        return cls(*prompt_or_chat(messages))


def model_names(endpoints: list[dict[str, Any]]) -> list[str]:
    """Every name a model answers to: base models, fine-tunes, then ``family@alias``."""
    names = [e["name"] for e in endpoints]
    for e in endpoints:
        names += [f"{e['registered_model']}@{a}" for a in e.get("aliases") or ()]
    return list(dict.fromkeys(names))


def connect(base_url: str | None = None, api_key: str | None = None) -> InProcess | Remote:
    """The remote service at ``base_url`` (else ``LORAFLOW_BASE_URL``), or this process."""
    from loraflow.settings import get_settings

    settings = get_settings()
    url = base_url or settings.base_url
    if not url:
        return InProcess()
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    return Remote(url, key)


class InProcess:
    """Models served by this process's engine (or its vLLM servers), through the SDK."""

    def models(self) -> list[str]:
        from loraflow.sdk import Model

        listed = Model.list().model_endpoints
        return model_names([m.model_dump() for m in listed])

    @staticmethod
    def _args(request: Request, s: Sampling) -> dict[str, Any]:
        return {
            "messages": request.messages,
            "max_new_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stop_sequences": s.stop,
            "seed": s.seed,
            "timeout": s.timeout,
        }

    def complete(self, model: str, request: Request, s: Sampling) -> Reply:
        from loraflow.sdk import Completion

        out = Completion.create(model, request.prompt, **self._args(request, s)).output
        return Reply(
            out.text, out.num_prompt_tokens or 0, out.num_completion_tokens, out.finish_reason
        )

    def stream(self, model: str, request: Request, s: Sampling) -> Iterator[str | Reply]:
        from loraflow.sdk import Completion

        chunks = Completion.create(model, request.prompt, stream=True, **self._args(request, s))
        return _pieces(chunks)

    async def acomplete(self, model: str, request: Request, s: Sampling) -> Reply:
        from loraflow.sdk import Completion

        response = await Completion.acreate(model, request.prompt, **self._args(request, s))
        out = response.output
        return Reply(
            out.text, out.num_prompt_tokens or 0, out.num_completion_tokens, out.finish_reason
        )

    async def astream(
        self, model: str, request: Request, s: Sampling
    ) -> AsyncIterator[str | Reply]:
        from loraflow.sdk import Completion

        chunks = await Completion.acreate(
            model, request.prompt, stream=True, **self._args(request, s)
        )
        text: list[str] = []
        async for chunk in chunks:
            for piece in _piece(chunk, text):
                yield piece


def _pieces(chunks: Iterator[Any]) -> Iterator[str | Reply]:
    text: list[str] = []
    for chunk in chunks:
        yield from _piece(chunk, text)


def _piece(chunk: Any, text: list[str]) -> list[str | Reply]:
    out = chunk.output
    if chunk.error is not None or out is None:
        raise LoraflowError(chunk.error.content.error if chunk.error else "the stream failed")
    pieces: list[str | Reply] = []
    if out.text:
        text.append(out.text)
        pieces.append(out.text)
    if out.finished:
        tokens = out.num_completion_tokens or 0
        pieces.append(Reply("".join(text), out.num_prompt_tokens or 0, tokens, out.finish_reason))
    return pieces


@dataclass
class Remote:
    """A ``loraflow serve`` at ``base_url``, over its OpenAI-compatible routes."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _body(
        self, model: str, request: Request, s: Sampling, stream: bool
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stop": s.stop,
            "seed": s.seed,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.messages is not None:
            return "/v1/chat/completions", body | {"messages": request.messages}
        return "/v1/completions", body | {"prompt": request.prompt}

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self._call("GET", path, None, timeout)

    def post(self, path: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
        return self._call("POST", path, body, timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        import httpx

        try:
            response = httpx.request(
                method, self.base_url + path, json=body, headers=self._headers(), timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        _check(response)
        return response.json()

    def _unreachable(self, exc: Exception) -> UnavailableError:
        return UnavailableError(
            f"cannot reach loraflow at {self.base_url} ({type(exc).__name__}: {exc}); "
            "is `loraflow serve` running there, and is LORAFLOW_BASE_URL right?"
        )

    def models(self) -> list[str]:
        return model_names(self.get("/v1/llm/model-endpoints")["model_endpoints"])

    def complete(self, model: str, request: Request, s: Sampling) -> Reply:
        path, body = self._body(model, request, s, stream=False)
        return _reply(self.post(path, body, timeout=s.timeout))

    def stream(self, model: str, request: Request, s: Sampling) -> Iterator[str | Reply]:
        import httpx

        path, body = self._body(model, request, s, stream=True)
        reading = _SseReader()
        try:
            with httpx.stream(
                "POST", self.base_url + path, json=body, headers=self._headers(), timeout=s.timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                for line in response.iter_lines():
                    yield from reading.line(line)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        yield reading.end()

    async def acomplete(self, model: str, request: Request, s: Sampling) -> Reply:
        import httpx

        path, body = self._body(model, request, s, stream=False)
        try:
            async with httpx.AsyncClient(timeout=s.timeout) as client:
                response = await client.post(
                    self.base_url + path, json=body, headers=self._headers()
                )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        _check(response)
        return _reply(response.json())

    async def astream(
        self, model: str, request: Request, s: Sampling
    ) -> AsyncIterator[str | Reply]:
        import httpx

        path, body = self._body(model, request, s, stream=True)
        reading = _SseReader()
        try:
            async with (
                httpx.AsyncClient(timeout=s.timeout) as client,
                client.stream(
                    "POST", self.base_url + path, json=body, headers=self._headers()
                ) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    _check(response)
                async for line in response.aiter_lines():
                    for piece in reading.line(line):
                        yield piece
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        yield reading.end()


def _check(response: Any) -> None:
    """Raise the loraflow error a failed response stands for, with the server's message."""
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail") or response.text
    except ValueError:
        detail = response.text
    detail = detail if isinstance(detail, str) else json.dumps(detail)
    if response.status_code == 404:
        raise NotFoundError(detail)
    if response.status_code == 401:
        raise LoraflowError(
            f"{detail}: the service wants a key; set LORAFLOW_API_KEY (for llm: "
            "`llm keys set loraflow`)"
        )
    if response.status_code in (400, 413, 422):
        raise InvalidRequestError(detail)
    if response.status_code >= 500:
        raise UnavailableError(f"the service failed ({response.status_code}): {detail}")
    raise LoraflowError(f"{response.status_code}: {detail}")


def _reply(body: dict[str, Any]) -> Reply:
    choice, usage = body["choices"][0], body.get("usage") or {}
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return Reply(
        text or "",
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
        choice.get("finish_reason"),
    )


class _SseReader:
    """OpenAI's server-sent chunks, as text pieces, then the whole reply."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.usage: dict[str, int] = {}
        self.finish: str | None = None

    def line(self, line: str) -> list[str]:
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            return []
        chunk = json.loads(data)
        if "error" in chunk:
            raise LoraflowError(chunk["error"].get("message", "the stream failed"))
        self.usage = chunk.get("usage") or self.usage
        pieces = []
        for choice in chunk.get("choices", []):
            piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            self.finish = choice.get("finish_reason") or self.finish
            if piece:
                self.text.append(piece)
                pieces.append(piece)
        return pieces

    def end(self) -> Reply:
        return Reply(
            "".join(self.text),
            self.usage.get("prompt_tokens", 0),
            self.usage.get("completion_tokens", 0),
            self.finish,
        )
