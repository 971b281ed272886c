"""PID files that name a process exactly: its pid and start time, so a reused pid is never
obeyed. The local stack writes them; loraflow reads the Prefect server's to find its API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(path: Path, pid: int, **extra: Any) -> None:
    """Record process ``pid`` (and ``extra`` fields, e.g. the URL it serves) in ``path``."""
    import psutil

    record = {"pid": pid, "started": psutil.Process(pid).create_time(), **extra}
    path.write_text(json.dumps(record))


def read(path: Path) -> dict[str, Any] | None:
    """The record in ``path`` when its process still runs, else None (a stale file is removed)."""
    import psutil

    try:
        record = json.loads(path.read_text())
        proc = psutil.Process(record["pid"])
        if proc.create_time() == record["started"] and proc.status() != psutil.STATUS_ZOMBIE:
            return record
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
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
