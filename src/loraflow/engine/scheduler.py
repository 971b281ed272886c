"""Continuous batching of concurrent callers into the engine.

Callers (SDK threads, HTTP requests, tasks) ``submit`` their requests and iterate events. One
scheduler thread per engine keeps a running batch (a ``Decoder``): between decoding steps it
admits what has arrived (up to ``max_batch`` rows), and finished rows leave at once. When idle,
it waits a short window after the first arrival so that requests sent together start together.
Each event goes to its caller's unbounded queue, so a slow reader never holds up the batch; a
caller that stops reading cancels its requests, which leave the batch at the next step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from loraflow import metrics
from loraflow.engine.generation import Request, TokenEvent

WINDOW_SECONDS = 0.01
MAX_BATCH = 64
_DONE = object()


class _Handoff:
    """A submission's events handed to a callable as they come (``Scheduler.submit_to``)."""

    def __init__(self, put: Callable[[Any], None]) -> None:
        self.deliver = put

    def put(self, item: Any) -> None:
        self.deliver(None if item is _DONE else item)


@dataclass
class _Submission:
    requests: list[Request]
    events: queue.Queue[Any] | _Handoff
    cancelled: threading.Event = field(default_factory=threading.Event)
    remaining: int = 0  # requests not finished yet


class Scheduler:
    """Runs the submissions of many callers through one engine, batched."""

    def __init__(self, engine: Any, window: float = WINDOW_SECONDS, max_batch: int = MAX_BATCH):
        self.engine = engine
        self.window = window
        self.max_batch = max_batch
        # this engine's gauges, looked up once: the loop sets them every decoding step
        self._queued = metrics.QUEUE.labels(engine.base)
        self._running = metrics.RUNNING.labels(engine.base)
        self._batch = metrics.BATCH.labels(engine.base)
        self._pending: queue.Queue[_Submission] = queue.Queue()
        self.idle = threading.Event()  # set while no request is queued or running
        self.idle.set()
        self._thread = threading.Thread(target=self._loop, name="loraflow-scheduler", daemon=True)
        self._thread.start()

    def submit(self, requests: list[Request], timeout: float | None = None) -> Iterator[TokenEvent]:
        """Queue ``requests`` (checked by the caller) and yield their events as they come.

        Event indexes count within ``requests``. Closing the iterator early cancels them.
        """
        events: queue.Queue[Any] = queue.Queue()
        self._queue(requests, timeout, sub := _Submission([], events))
        return self._events(sub, events)

    def submit_to(
        self, requests: list[Request], put: Callable[[Any], None], timeout: float | None = None
    ) -> threading.Event:
        """Queue ``requests``; this scheduler's thread hands ``put`` each event as it comes, an
        exception if they fail, then None. No thread waits on the caller's side (the HTTP
        service passes a callable that wakes its event loop). Set the returned event to cancel.
        """
        return self._queue(requests, timeout, _Submission([], _Handoff(put))).cancelled

    def _queue(
        self, requests: list[Request], timeout: float | None, sub: _Submission
    ) -> _Submission:
        deadline = None if timeout is None else time.monotonic() + timeout
        sub.requests = [replace(r, deadline=deadline, cancelled=sub.cancelled) for r in requests]
        sub.remaining = len(sub.requests)
        self.idle.clear()
        self._pending.put(sub)
        return sub

    @staticmethod
    def _events(sub: _Submission, events: queue.Queue[Any]) -> Iterator[TokenEvent]:
        try:
            while True:
                item = events.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            sub.cancelled.set()

    def _arrivals(self, idle: bool) -> list[_Submission]:
        """New submissions: when idle, wait for one and then a short window for more."""
        found: list[_Submission] = []
        if idle:
            found.append(self._pending.get())
            until = time.monotonic() + self.window
            while (left := until - time.monotonic()) > 0:
                try:
                    found.append(self._pending.get(timeout=left))
                except queue.Empty:
                    break
        while True:
            try:
                found.append(self._pending.get_nowait())
            except queue.Empty:
                break
        return [s for s in found if not s.cancelled.is_set()]

    def _loop(self) -> None:
        decoder: Any = None
        waiting: list[_Submission] = []
        owners: dict[int, tuple[_Submission, int]] = {}
        keys = iter(range(2**62))
        while True:
            running = decoder is not None and bool(decoder.rows)
            if not running and not waiting and self._pending.empty():
                self.idle.set()
            waiting += self._arrivals(idle=not running and not waiting)
            room = self.max_batch - (len(decoder.rows) if running else 0)
            admitted, waiting = _fit(waiting, room, running)
            self._queued.set(len(waiting) + self._pending.qsize())
            try:
                if admitted:
                    if not running:
                        decoder = self.engine.decoder()
                    self._admit(decoder, admitted, owners, keys)
                if decoder is not None and decoder.rows:
                    self._running.set(len(decoder.rows))
                    self._batch.observe(len(decoder.rows))
                    self._route(decoder.step(), owners)
                else:
                    self._running.set(0)
                    self._fail_rows(decoder, owners)
            except BaseException as exc:  # a fault of the whole batch: its callers see it
                hit = [s for s, _ in owners.values()] + admitted
                for sub in {id(s): s for s in hit}.values():
                    _fail(sub, exc)
                owners.clear()
                decoder = None
            self._forget_cancelled(owners)

    def _admit(
        self,
        decoder: Any,
        admitted: list[_Submission],
        owners: dict[int, tuple[_Submission, int]],
        keys: Iterator[int],
    ) -> None:
        """Prefill the admitted submissions together. If that raises, prefill each alone, so
        that only the submission at fault fails; the running rows are not touched."""
        groups = [admitted] + ([[sub] for sub in admitted] if len(admitted) > 1 else [])
        for n, group in enumerate(groups):
            keyed = []
            for sub in group:
                for k, r in enumerate(sub.requests):
                    key = next(keys)
                    owners[key] = (sub, k)
                    keyed.append((key, r))
            try:
                self._route(decoder.admit(keyed), owners)
            except Exception as exc:
                for key, _ in keyed:
                    owners.pop(key, None)
                if len(group) == 1:
                    _fail(group[0], exc)
                continue
            self._fail_rows(decoder, owners)
            if n == 0:
                return  # all admitted together

    @staticmethod
    def _fail_rows(decoder: Any, owners: dict[int, tuple[_Submission, int]]) -> None:
        """Fail the submissions whose rows raised in the decoder; their other rows leave."""
        failures, decoder.failures = decoder.failures, []
        for key, exc in failures:
            if key in owners:
                sub, _ = owners[key]
                for other in [k for k, (s, _) in owners.items() if s is sub]:
                    del owners[other]
                _fail(sub, exc)

    @staticmethod
    def _route(events: list[TokenEvent], owners: dict[int, tuple[_Submission, int]]) -> None:
        for event in events:
            if event.index not in owners:
                continue  # its submission failed or was cancelled
            sub, k = owners[event.index]
            if event.finished:
                del owners[event.index]
                sub.remaining -= 1
            event.index = k
            sub.events.put(event)
            if sub.remaining == 0:
                sub.events.put(_DONE)

    @staticmethod
    def _forget_cancelled(owners: dict[int, tuple[_Submission, int]]) -> None:
        for key in [key for key, (sub, _) in owners.items() if sub.cancelled.is_set()]:
            del owners[key]


def _fail(sub: _Submission, exc: BaseException) -> None:
    """End a submission with ``exc``: its caller raises it; its rows leave the batch."""
    sub.cancelled.set()
    sub.events.put(exc)
    sub.events.put(_DONE)


def _fit(
    waiting: list[_Submission], room: int, running: bool
) -> tuple[list[_Submission], list[_Submission]]:
    """The submissions that fit in ``room`` rows, in arrival order, and the rest.

    An idle engine always takes the first one, however large.
    """
    taken: list[Any] = []
    size = 0
    for n, sub in enumerate(waiting):
        if size + len(sub.requests) > room and (taken or running):
            return taken, waiting[n:]
        taken.append(sub)
        size += len(sub.requests)
    return taken, []
