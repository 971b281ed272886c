"""Process identity for pid files, heartbeats and training workers: exact, and deaf to the
wall clock; and a job's heartbeat, which tells a killed job's run from a live one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from loraflow import heartbeat, pidfile
from loraflow.storage import get_store


def test_a_live_process_stays_itself_when_the_wall_clock_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = pidfile.identity(os.getpid())
    if sys.platform.startswith("linux"):  # psutil derives create times from the boot time
        from psutil import _pslinux

        real = _pslinux.boot_time
        monkeypatch.setattr(_pslinux, "boot_time", lambda: real() + 1.0)  # NTP moved the clock
    assert pidfile.running(me)


def test_an_ended_or_reused_process_is_not_running(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    them = pidfile.identity(child.pid)
    child.wait()
    assert not pidfile.running(them)
    me = pidfile.identity(os.getpid())
    assert not pidfile.running(me | {"started": me["started"] - 0.01})  # pid reused
    with pytest.raises(psutil.NoSuchProcess):
        pidfile.identity(child.pid)

    path = tmp_path / "server.pid"
    pidfile.write(path, os.getpid(), url="http://127.0.0.1:1")
    assert pidfile.read(path) == me | {"url": "http://127.0.0.1:1"}
    path.write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))  # another process's record
    assert pidfile.read(path) is None
    assert not path.exists()


def test_a_zombie_is_not_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    them = pidfile.identity(child.pid)
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # ended, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not pidfile.running(them)
    child.wait()


def beat_of(pid: int, at: float) -> None:
    record = pidfile.identity(pid) | {"host": socket.gethostname(), "at": at}
    get_store().put(heartbeat.key("ft-1"), json.dumps(record).encode())


def test_a_heartbeat_tells_a_live_job_from_a_killed_one() -> None:
    now = time.time()
    assert heartbeat.gone("ft-1", started=now - 5, now=now) is None  # not beating yet
    assert "no heartbeat for 61 s" in str(heartbeat.gone("ft-1", started=now - 61, now=now))

    with heartbeat.beating("ft-1"):
        assert heartbeat.gone("ft-1", started=now - 61) is None
    # the body ended; the process still records the final state, however long Prefect takes
    assert heartbeat.gone("ft-1", started=now - 100, now=now + 100) is None

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    beat_of(child.pid, at=now - 1)
    child.wait()
    assert "is no longer running" in str(heartbeat.gone("ft-1", started=now - 5, now=now))
    beat_of(os.getpid(), at=now - 61)  # alive on this host: its own clock does not matter
    assert heartbeat.gone("ft-1", started=now - 100, now=now) is None
    record = pidfile.identity(os.getpid()) | {"host": "another-host", "at": now - 61}
    get_store().put(heartbeat.key("ft-1"), json.dumps(record).encode())
    assert "no heartbeat from another-host" in str(
        heartbeat.gone("ft-1", started=now - 100, now=now)
    )


def test_a_resumed_job_is_not_judged_by_its_killed_attempts_heartbeat() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    now = time.time()
    beat_of(child.pid, at=now - 30)  # the attempt killed before the resume
    child.wait()
    assert heartbeat.gone("ft-1", started=now - 1, now=now) is None  # resumed, not beating yet
    assert "no heartbeat for 61 s" in str(heartbeat.gone("ft-1", started=now - 1, now=now + 60))
