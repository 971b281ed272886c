"""PID files that name a process exactly: its pid and start time, so a reused pid is never
obeyed. The local stack writes them; loraflow reads the Prefect server's to find its API."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write(path: Path, pid: int, **extra: Any) -> None:
    """Record process ``pid`` (and ``extra`` fields, e.g. the URL it serves) in ``path``."""
    path.write_text(json.dumps(identity(pid) | extra))


def identity(pid: int) -> dict[str, Any]:
    """What names process ``pid`` exactly: its pid, start time and (on Linux) the boot it
    started in. Raises ``psutil.NoSuchProcess`` when there is no such process."""
    return {"pid": pid, "started": _started(pid)} | ({"boot": _BOOT} if _BOOT else {})


def running(record: Mapping[str, Any]) -> bool:
    """Whether the process an ``identity`` record names still runs (not a reused pid, not a
    zombie); other keys in ``record`` are ignored."""
    import psutil

    pid = record["pid"]
    try:
        return (
            _started(pid) == record["started"]
            and record.get("boot") == (_BOOT or None)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def _started(pid: int) -> float:
    """When process ``pid`` started, on a clock that wall-clock changes do not move.

    On Linux: the kernel's seconds since boot (``/proc/<pid>/stat``). psutil's
    ``create_time()`` adds the wall-clock boot time, which moves when NTP steps or slews the
    clock: a live process then looked gone and its job was marked crashed mid-run.
    Elsewhere: psutil's create time.
    """
    import psutil

    if not _BOOT:
        return float(psutil.Process(pid).create_time())
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        raise psutil.NoSuchProcess(pid) from None
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime in ticks


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_BOOT = _boot_id()


def read(path: Path) -> dict[str, Any] | None:
    """The record in ``path`` when its process still runs, else None (a stale file is removed)."""
    try:
        record = json.loads(path.read_text())
        if running(record):
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
