"""Batching of concurrent callers into the engine: a collection window, then one batch.

Callers (SDK threads, HTTP requests, tasks) ``submit`` their requests and iterate events; a
single scheduler thread per engine gathers what arrives within a short window (or until the
batch is full), runs it as one batch, and routes each event to its caller's queue. Queues are
unbounded, so a slow reader never holds up the batch; a caller that stops reading cancels its
requests, which leave the batch at the next step.

Batches are formed between generations (static batching): a request that arrives while a batch
runs waits for it to finish. Joining a running batch (continuous batching) is not done yet.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from loraflow.engine.generation import Request, TokenEvent

WINDOW_SECONDS = 0.02
MAX_BATCH = 64
_DONE = object()


@dataclass
class _Submission:
    requests: list[Request]
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """Runs the submissions of many callers through one engine, batched."""

    def __init__(self, engine: Any, window: float = WINDOW_SECONDS, max_batch: int = MAX_BATCH):
        self.engine = engine
        self.window = window
        self.max_batch = max_batch
        self._pending: queue.Queue[_Submission] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="loraflow-scheduler", daemon=True)
        self._thread.start()

    def submit(self, requests: list[Request], timeout: float | None = None) -> Iterator[TokenEvent]:
        """Queue ``requests`` (checked by the caller) and yield their events as they come.

        Event indexes count within ``requests``. Closing the iterator early cancels them.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        sub = _Submission([])
        sub.requests = [replace(r, deadline=deadline, cancelled=sub.cancelled) for r in requests]
        self._pending.put(sub)
        return self._events(sub)

    @staticmethod
    def _events(sub: _Submission) -> Iterator[TokenEvent]:
        try:
            while True:
                item = sub.events.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            sub.cancelled.set()

    def _collect(self) -> list[_Submission]:
        first = self._pending.get()
        batch, size = [first], len(first.requests)
        until = time.monotonic() + self.window
        while size < self.max_batch:
            try:
                nxt = self._pending.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            batch.append(nxt)
            size += len(nxt.requests)
        return [s for s in batch if not s.cancelled.is_set()]

    def _loop(self) -> None:
        while True:
            subs = self._collect()
            if subs:
                self._run(subs)

    def _run(self, subs: list[_Submission]) -> None:
        owners: list[tuple[_Submission, int]] = []
        requests: list[Request] = []
        for sub in subs:
            for k, r in enumerate(sub.requests):
                owners.append((sub, k))
                requests.append(r)
        try:
            for event in self.engine.generate_batch(requests):
                sub, k = owners[event.index]
                event.index = k
                sub.events.put(event)
        except BaseException as exc:  # the callers see it; the scheduler goes on
            for sub in subs:
                sub.events.put(exc)
        for sub in subs:
            sub.events.put(_DONE)
