"""Streams of a backend's events on an asyncio event loop, without tying up executor threads.

The engine's scheduler hands events straight to the loop (``submitted``); a backend that only
has a blocking iterator (vLLM's client) is read by a thread of its own (``iterate_in_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

_END = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _to_loop(items: asyncio.Queue[Any]) -> Callable[[Any], None]:
    """A callable any thread may call to put an item on ``items``, in the running loop."""
    loop = asyncio.get_running_loop()

    def put(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            loop.call_soon_threadsafe(items.put_nowait, item)

    return put


async def iterate_in_thread(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Yield the items of ``make()``, run in a thread of its own.

    Items cross to the event loop as they come, so a slow reader never blocks the producer.
    Leaving the iteration early makes the thread close the iterator at its next item (for
    the engine's iterators, that cancels the generation).
    """
    items: asyncio.Queue[Any] = asyncio.Queue()
    deliver = _to_loop(items)
    stop = threading.Event()

    def pump() -> None:
        iterator = make()
        try:
            for item in iterator:
                if stop.is_set():
                    break
                deliver(item)
        except BaseException as exc:  # delivered to the awaiting side
            deliver(_Raised(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            deliver(_END)

    threading.Thread(target=pump, name="loraflow-stream", daemon=True).start()
    try:
        while True:
            item = await items.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()


async def submitted(backend: Any, requests: list[Any], timeout: float | None) -> AsyncIterator[Any]:
    """The events of ``requests`` submitted to ``backend``, as they come.

    With the engine (``submit_to``) its scheduler thread wakes this loop with each event: no
    thread waits per stream. Leaving the iteration early cancels the requests.
    """
    submit_to = getattr(backend, "submit_to", None)
    if submit_to is None:
        async for event in iterate_in_thread(lambda: backend.submit(requests, timeout=timeout)):
            yield event
        return
    items: asyncio.Queue[Any] = asyncio.Queue()
    cancel = submit_to(requests, _to_loop(items), timeout)
    try:
        while (item := await items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
