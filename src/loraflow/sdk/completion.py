"""``Completion``: LLM Engine's completion calls, served by the in-process engine.

``create`` returns a response, or with ``stream=True`` an iterator of chunks; ``acreate`` is the
asyncio twin of both. Beyond LLM Engine's client: chat ``messages`` (system turn and history),
``seed``, and ``generate`` for many inputs with ``num_generations`` each.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal, overload

from loraflow import completion
from loraflow.sdk.types import CompletionStreamResponse, CompletionSyncResponse, GenerateOutput

Messages = list[dict[str, str]]
_END = object()


class Completion:
    """Completions from a base model or a fine-tune. Every method is a classmethod."""

    @overload
    @classmethod
    def create(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        timeout: float | None = 10,
        stream: Literal[False] = False,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        messages: Messages | None = None,
    ) -> CompletionSyncResponse: ...

    @overload
    @classmethod
    def create(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        timeout: float | None = 10,
        *,
        stream: Literal[True],
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        messages: Messages | None = None,
    ) -> Iterator[CompletionStreamResponse]: ...

    @classmethod
    def create(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        timeout: float | None = 10,
        stream: bool = False,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        messages: Messages | None = None,
    ) -> CompletionSyncResponse | Iterator[CompletionStreamResponse]:
        """Complete ``prompt`` (or chat ``messages``) with ``model``.

        ``model`` is a base model, a fine-tuned model name, ``family@alias`` or
        ``family/version``. Temperature 0 is greedy; ``seed`` makes sampling repeatable; text
        ends before the first stop sequence. Raises InvalidRequestError naming a bad field,
        NotFoundError for an unknown model, CompletionTimeoutError after ``timeout`` seconds.
        With ``stream=True`` the request is checked at once, then chunks carry new text.
        """
        p = completion.params(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_sequences=stop_sequences,
            return_token_log_probs=return_token_log_probs,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            timeout=timeout,
        )
        if stream:
            return completion.stream(model, prompt, messages, p)
        return completion.complete(model, prompt, messages, p)

    @overload
    @classmethod
    async def acreate(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        timeout: float | None = 10,
        stream: Literal[False] = False,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        messages: Messages | None = None,
    ) -> CompletionSyncResponse: ...

    @overload
    @classmethod
    async def acreate(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        timeout: float | None = 10,
        *,
        stream: Literal[True],
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        messages: Messages | None = None,
    ) -> AsyncIterator[CompletionStreamResponse]: ...

    @classmethod
    async def acreate(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        timeout: float | None = 10,
        stream: bool = False,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        messages: Messages | None = None,
    ) -> CompletionSyncResponse | AsyncIterator[CompletionStreamResponse]:
        """The asyncio twin of ``create``: generation runs in a worker thread.

        With ``stream=True``, awaiting it checks the request and returns an async iterator
        of chunks; leaving the iteration early stops the generation.
        """
        call = functools.partial(
            cls.create,
            model,
            prompt,
            max_new_tokens,
            temperature,
            stop_sequences,
            return_token_log_probs,
            timeout,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            messages=messages,
        )
        if not stream:
            return await asyncio.to_thread(call)
        chunks = await asyncio.to_thread(call, stream=True)
        return _in_thread(lambda: chunks)

    @classmethod
    def generate(
        cls,
        model: str,
        inputs: Sequence[str | Messages],
        num_generations: int = 1,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        batch_size: int = 32,
    ) -> list[GenerateOutput]:
        """``num_generations`` completions for each input, a prompt or chat messages.

        Inputs run batched, ``batch_size`` requests at a time; with ``seed``, generation ``g``
        of every input samples with ``seed + g``. Returns one GenerateOutput per input, in
        order, with its texts, outputs and token statistics.
        """
        p = completion.params(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_sequences=stop_sequences,
            return_token_log_probs=return_token_log_probs,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            timeout=timeout,
        )
        return completion.generate(model, inputs, p, num_generations, batch_size)

    @classmethod
    async def agenerate(
        cls, model: str, inputs: Sequence[str | Messages], **kwargs: Any
    ) -> list[GenerateOutput]:
        """The asyncio twin of ``generate``."""
        return await asyncio.to_thread(cls.generate, model, inputs, **kwargs)


async def _in_thread(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Iterate a blocking iterator in a worker thread; closing early stops it there."""
    items: queue.Queue[Any] = queue.Queue(maxsize=64)
    stop = threading.Event()

    def pump() -> None:
        iterator = make()
        try:
            for item in iterator:
                if stop.is_set():
                    break
                items.put(item)
        except BaseException as exc:  # delivered to the awaiting side
            items.put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            items.put(_END)

    thread = threading.Thread(target=pump, name="loraflow-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = await asyncio.to_thread(items.get)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.01)
