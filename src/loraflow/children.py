"""What loraflow needs of the processes it starts (vLLM servers, training workers): a free
local port to give one, what to show of its log when it fails, and how to stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 15) -> str:
    """The last error lines of the log at ``path`` (a traceback's last line says most; a
    launcher's own summary after it says little), then its last ``lines`` lines."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in text if "Error" in line and "ChildFailedError" not in line]
    head = [*dict.fromkeys(errors[-3:]), "..."] if errors else []
    return "\n".join(head + text[-lines:])


def stop_group(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """End ``proc`` and its whole process group (it was started in a session of its own):
    SIGTERM, then SIGKILL after ``grace`` seconds. A no-op once it has ended."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
