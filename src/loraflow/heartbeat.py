"""Heartbeats of running jobs, so a job whose process died is seen as crashed, not RUNNING.

A job's run writes ``jobs/<job id>/heartbeat.json`` in the object store while it runs: which
process on which host, and when. A process killed outright (SIGKILL, OOM, a lost machine)
reports nothing to Prefect, so its run would stay RUNNING forever; ``gone`` tells it from the
heartbeat: the process no longer exists on this host, or the beats stopped.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from loraflow import pidfile
from loraflow.errors import LoraflowError, NotFoundError
from loraflow.storage import get_store

EVERY_SECONDS = 10.0
STALE_AFTER = 6 * EVERY_SECONDS  # beats missed this long: the process is gone


def key(job_id: str) -> str:
    return f"jobs/{job_id}/heartbeat.json"


def _identity() -> dict[str, Any]:
    return pidfile.identity(os.getpid()) | {"host": socket.gethostname()}


@contextmanager
def beating(job_id: str, every: float = EVERY_SECONDS) -> Iterator[None]:
    """Write the job's heartbeat every ``every`` seconds while the body runs; a beat that
    cannot be written (storage down a moment) is skipped, not fatal. The last beat says the
    body ended: the process goes on to record the run's final state (which can take a while
    when Prefect's API is slow), and is judged by whether it still runs."""
    store, me, stop = get_store(), _identity(), threading.Event()

    def beat(**extra: bool) -> None:
        with suppress(LoraflowError, OSError):
            store.put(key(job_id), json.dumps({**me, "at": time.time(), **extra}).encode())

    def loop() -> None:
        while not stop.wait(every):
            beat()

    beat()
    thread = threading.Thread(target=loop, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        beat(ended=True)


def gone(job_id: str, started: float | None, now: float | None = None) -> str | None:
    """Why the process running ``job_id`` is gone, or None while it may still run.

    ``started``: when the run (this attempt of it) started, epoch seconds; a run with no
    heartbeat yet counts as gone only once it is older than ``STALE_AFTER``. A heartbeat
    from before ``started`` is an earlier attempt's (a process killed before a resume or a
    retry) and counts as none.
    """
    now = time.time() if now is None else now
    try:
        beat = json.loads(get_store().get_bytes(key(job_id)))
    except NotFoundError:
        beat = None
    if beat is None or (started is not None and beat["at"] < started):
        if started is not None and now - started > STALE_AFTER:
            return f"no heartbeat for {now - started:.0f} s since the run started"
        return None
    if beat.get("host") == socket.gethostname():  # this host knows its processes: no clock
        if pidfile.running(beat):
            return None
        return f"its process {beat['pid']} on {beat['host']} is no longer running"
    if now - beat["at"] > STALE_AFTER:
        return f"no heartbeat from {beat['host']} for {now - beat['at']:.0f} s"
    return None
