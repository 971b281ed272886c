"""Completions started now and read later: aiXplain's execute-then-poll.

``start`` checks the request (an unknown model or a bad field raises at once), then runs it on
a small pool of threads and returns the run's id; ``status`` tells how it stands, in the shape
aiXplain's poll answers (``RunStatus``): ``completed``, ``status`` (IN_PROGRESS, SUCCESS,
FAILED), ``data`` (the text), ``usage`` and ``runTime`` (seconds). Runs live in this
process's memory for an hour after they end (``KEEP_SECONDS``); the server's execute and poll
routes and the SDK's ``Completion.submit``/``Completion.poll`` share them.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loraflow.errors import LoraflowError, NotFoundError
from loraflow.types import RunStatus, RunUsage

KEEP_SECONDS = 3600.0
MAX_RUNS = 10_000  # ended runs beyond this are forgotten oldest first
WORKERS = 8

_lock = threading.Lock()
_runs: dict[str, _Run] = {}
_pool: ThreadPoolExecutor | None = None


@dataclass
class _Run:
    future: Future[Any]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


def start(model: str, prompt: str | None, messages: Any, params: Any) -> str:
    """Check the request, start it, return its run id."""
    from loraflow import completion

    call = completion.Call(model, [(prompt, messages)], params)
    run_id = uuid.uuid4().hex
    with _lock:
        _forget_old()
        run = _Run(_executor().submit(lambda: call.outputs()[0]))
        _runs[run_id] = run
    run.future.add_done_callback(lambda _: setattr(run, "ended", time.monotonic()))
    return run_id


def status(run_id: str) -> RunStatus:
    """How run ``run_id`` stands. NotFoundError if unknown."""
    with _lock:
        run = _runs.get(run_id)
    if run is None:
        raise NotFoundError(
            f"no run {run_id!r} here: its id is wrong, it ran on another server, or it ended "
            f"over {KEEP_SECONDS / 3600:.0f} h ago"
        )
    if not run.future.done():
        return RunStatus(completed=False, status="IN_PROGRESS")
    took = (run.ended or time.monotonic()) - run.started
    exc = run.future.exception()
    if exc is not None:
        message = str(exc) if isinstance(exc, LoraflowError) else "internal error"
        return RunStatus(completed=True, status="FAILED", error_message=message, run_time=took)
    out = run.future.result()
    usage = RunUsage(
        prompt_tokens=out.num_prompt_tokens or 0, completion_tokens=out.num_completion_tokens
    )
    return RunStatus(completed=True, status="SUCCESS", data=out.text, usage=usage, run_time=took)


def _forget_after_fork() -> None:  # a forked child has neither the pool's threads nor runs
    global _pool, _lock
    _pool, _lock = None, threading.Lock()
    _runs.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="loraflow-run")
    return _pool


def _forget_old() -> None:
    now = time.monotonic()
    ended = sorted((r.ended, k) for k, r in _runs.items() if r.ended is not None)
    for when, key in ended:
        if now - when > KEEP_SECONDS or len(_runs) > MAX_RUNS:
            del _runs[key]
