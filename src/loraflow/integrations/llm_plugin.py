"""loraflow's plugin for simonw's ``llm``, registered through llm's ``llm`` entry point.

After ``pip install loraflow llm``, ``llm models`` lists every model loraflow serves (base
models, fine-tunes, ``family@alias``) as ``loraflow/<name>`` with ``<name>`` as an alias, and
``llm -m <name> "prompt"``, ``llm chat``, streaming, ``-o temperature/max_tokens/top_p/stop/
seed``, token usage and conversations work, sync and async (``llm.get_async_model``).

Models run in this process (the SDK) unless ``LORAFLOW_BASE_URL`` names a ``loraflow serve``;
then its key comes from ``llm keys set loraflow`` or ``LORAFLOW_API_KEY``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import llm
from llm.parts import TextPart
from pydantic import Field

from loraflow.errors import LoraflowError
from loraflow.integrations.client import (
    InProcess,
    Messages,
    Remote,
    Reply,
    Request,
    Sampling,
    connect,
)

PREFIX = "loraflow/"
DEFAULT_MAX_TOKENS = 256  # llm is for conversations: longer answers than the SDK's 20 tokens


class Options(llm.Options):
    temperature: float | None = Field(
        None, ge=0, le=1, description="Sampling temperature, 0 (greedy) to 1; loraflow's 0.2 unset."
    )
    max_tokens: int | None = Field(
        None, ge=1, description=f"Most tokens to generate ({DEFAULT_MAX_TOKENS} unset)."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(None, description="Stop before this text.")
    seed: int | None = Field(None, ge=0, description="Makes sampling repeatable.")


def _sampling(options: Any) -> Sampling:
    stop = [options.stop] if isinstance(options.stop, str) else options.stop
    return Sampling(
        max_tokens=options.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=0.2 if options.temperature is None else options.temperature,
        top_p=options.top_p,
        stop=stop,
        seed=options.seed,
    )


def _request(prompt: Any) -> Request:
    """The prompt's messages (system, the conversation so far, this turn) as chat turns."""
    turns: Messages = []
    for message in prompt.messages:
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        if message.role in ("system", "user", "assistant") and (text or message.role != "system"):
            turns.append({"role": message.role, "content": text})
    return Request.of(turns)


class _Loraflow:
    can_stream = True
    key_env_var = "LORAFLOW_API_KEY"

    def __init__(self, name: str, client: InProcess | Remote) -> None:
        self.model_id = PREFIX + name
        self.name = name
        self.client = client
        self.needs_key = "loraflow" if isinstance(client, Remote) else None

    def _client(self, key: str | None) -> InProcess | Remote:
        if isinstance(self.client, Remote):
            return Remote(self.client.base_url, key or self.client.api_key)
        return self.client

    Options = Options


class LoraflowModel(_Loraflow, llm.KeyModel):
    def execute(
        self, prompt: Any, stream: bool, response: Any, conversation: Any, key: str | None
    ) -> Iterator[str]:
        client, request, s = self._client(key), _request(prompt), _sampling(prompt.options)
        try:
            if not stream:
                reply = client.complete(self.name, request, s)
                _usage(response, reply)
                yield reply.text
                return
            for piece in client.stream(self.name, request, s):
                if isinstance(piece, Reply):
                    _usage(response, piece)
                else:
                    yield piece
        except LoraflowError as exc:
            raise llm.ModelError(str(exc)) from None


class LoraflowAsyncModel(_Loraflow, llm.AsyncKeyModel):
    async def execute(
        self, prompt: Any, stream: bool, response: Any, conversation: Any, key: str | None
    ) -> AsyncGenerator[str, None]:
        client, request, s = self._client(key), _request(prompt), _sampling(prompt.options)
        try:
            if not stream:
                reply = await client.acomplete(self.name, request, s)
                _usage(response, reply)
                yield reply.text
                return
            async for piece in client.astream(self.name, request, s):
                if isinstance(piece, Reply):
                    _usage(response, piece)
                else:
                    yield piece
        except LoraflowError as exc:
            raise llm.ModelError(str(exc)) from None


def _usage(response: Any, reply: Reply) -> None:
    response.set_usage(input=reply.prompt_tokens, output=reply.completion_tokens)


@llm.hookimpl
def register_models(register: Any) -> None:
    client = connect()
    if isinstance(client, Remote) and not client.api_key:  # `llm keys set loraflow`
        client.api_key = llm.get_key(key_alias="loraflow", env_var=_Loraflow.key_env_var)
    try:
        names = client.models()
    except LoraflowError as exc:  # llm's other models still work; say why ours are missing
        sys.stderr.write(f"loraflow: its models are not listed: {exc}\n")
        return
    for name in names:
        register(LoraflowModel(name, client), LoraflowAsyncModel(name, client), aliases=[name])
