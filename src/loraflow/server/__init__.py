"""``loraflow serve``: LLM Engine's REST API and OpenAI's, on uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5005
KEEP_ALIVE_SECONDS = 75  # idle connections: longer than clients and load balancers keep them


def api_keys_or_new() -> tuple[list[str], str | None]:
    """The configured API keys, or one new key (returned second, to be shown once)."""
    from loraflow.settings import get_settings, new_api_key

    keys = [k.get_secret_value() for k in get_settings().api_keys]
    if keys:
        return keys, None
    key = new_api_key()
    return [key], key


def build(api_keys: list[str], max_upload_bytes: int | None = None) -> Any:
    from loraflow.server.app import create_app

    return create_app(api_keys, max_upload_bytes)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, announce: Any = print) -> None:
    """Run the service until interrupted; prints a new API key once when none is configured."""
    import uvicorn

    from loraflow import backends
    from loraflow.files import housekeeping

    # loraflow's own lines (models warmed, vLLM started, storage retries), then the access log
    _log_to_stderr("loraflow", "%(levelname)s %(name)s: %(message)s")
    housekeeping()  # what failed uploads left behind goes, before anything is served
    backends.start()  # a backend that cannot serve fails here; the models warm meanwhile
    keys, new = api_keys_or_new()
    if new is not None:
        announce(
            "No LORAFLOW_API_KEYS set; this server's API key (shown once):\n"
            f"  {new}\n"
            f"  llmengine: LLM_ENGINE_BASE_PATH=http://{host}:{port}/ SCALE_API_KEY=<key>\n"
            f"  openai:    OpenAI(base_url='http://{host}:{port}/v1', api_key='<key>')"
        )
    _log_to_stderr("loraflow.access", "%(message)s")  # its lines are JSON
    with _exit_cleanly_on_sigterm():
        uvicorn.run(
            build(keys),
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            # idle connections stay open longer than a client or load balancer keeps them
            # (60 s is common): closing first races a client reusing the connection, which
            # then reads a reset (uvicorn's 5 s lost 1 of ~1,000 streams under load here)
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )


def _log_to_stderr(name: str, form: str) -> None:
    """Logger ``name``'s INFO lines on stderr, beside uvicorn's own log, formatted ``form``."""
    import logging
    import sys

    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(form))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@contextmanager
def _exit_cleanly_on_sigterm() -> Iterator[None]:
    """uvicorn shuts down on SIGTERM, then raises the signal again; by default that kills the
    process before its exit handlers run, orphaning what they stop (the ephemeral Prefect
    server a job call starts). Here it becomes a normal exit, as SIGINT already is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
