"""PID files that name a process exactly: its pid and start time, so a reused pid is never
obeyed. The local stack writes them; loraflow reads the Prefect server's to find its API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(path: Path, pid: int, **extra: Any) -> None:
    """Record process ``pid`` (and ``extra`` fields, e.g. the URL it serves) in ``path``."""
    path.write_text(json.dumps(identity(pid) | extra))


def identity(pid: int) -> dict[str, Any]:
    """What names process ``pid`` exactly: its pid and start time."""
    import psutil

    return {"pid": pid, "started": psutil.Process(pid).create_time()}


def running(pid: int, started: float) -> bool:
    """Whether the process that ``identity`` named still runs (not a reused pid, no zombie)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def read(path: Path) -> dict[str, Any] | None:
    """The record in ``path`` when its process still runs, else None (a stale file is removed)."""
    try:
        record = json.loads(path.read_text())
        if running(record["pid"], record["started"]):
            return dict(record)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    path.unlink(missing_ok=True)
    return None


def process(path: Path) -> Any:
    """The live ``psutil.Process`` that ``path`` names, or None."""
    import psutil

    record = read(path)
    if record is None:
        return None
    try:
        return psutil.Process(record["pid"])
    except psutil.Error:
        return None
