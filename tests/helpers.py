"""Test helpers: files to validate, a stream that breaks mid-way, a flaky S3 proxy."""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


def write(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def csv_rows(n: int, start: int = 0) -> str:
    """A valid CSV body with ``n`` distinct rows."""
    lines = ["prompt,response"]
    lines += [f"question {i},answer {i}" for i in range(start, start + n)]
    return "\n".join(lines) + "\n"


class BreakingReader:
    """A binary stream that fails after ``fail_after`` bytes, like a dropped connection."""

    def __init__(self, size: int, fail_after: int) -> None:
        self.size = size
        self.fail_after = fail_after
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.sent if n < 0 else min(n, self.size - self.sent)
        if self.sent + n > self.fail_after:
            raise OSError("connection reset while reading the upload")
        self.sent += n
        return b"x" * n


class FlakyProxy:
    """An HTTP proxy to an S3 endpoint that answers its first requests with ``statuses``.

    S3 throttling (429/503 SlowDown) and 5xx errors look like this to a client; the proxy
    counts the requests it saw.
    """

    def __init__(self, upstream: str, statuses: list[int]) -> None:
        self.upstream = urlsplit(upstream)
        self.statuses = statuses
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests += 1
                if proxy.requests <= len(proxy.statuses):
                    payload = (
                        b"<?xml version='1.0'?><Error><Code>SlowDown</Code>"
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(proxy.statuses[proxy.requests - 1])
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                skip = {"transfer-encoding", "connection"}
                if self.command != "HEAD":  # HEAD keeps the upstream length of the object
                    skip.add("content-length")
                    self.send_header("Content-Length", str(len(data)))
                for key, value in resp.getheaders():
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


SUPPORT_CSV = Path(__file__).resolve().parents[1] / "src/loraflow/datasets/customer_support.csv"


def tiny_fine_tune(
    tmp: Path,
    suffix: str = "test",
    rows: int = 60,
    model: str = "tiny-llama-test",
    **hyper: object,
) -> object:
    """Fine-tune ``model`` (the tiny one unless given) on the first ``rows`` of the bundled
    data through the real flow (in process).

    Needs the Prefect harness; returns the flow's FineTuneOutcome (registered, served).
    """
    from flows.fine_tune import fine_tune
    from loraflow import File
    from loraflow.fine_tuning import FineTuneRequest

    lines = SUPPORT_CSV.read_text().splitlines()[: rows + 1]
    path = write(tmp, f"support-{suffix}.csv", "\n".join(lines) + "\n")
    hp = {"epochs": 3, "batch_size": 4, "lr": 0.01, "validation_fraction": 0.1, **hyper}
    request = FineTuneRequest(
        model=model,
        training_file=File.upload(path).id,
        hyperparameters=hp,
        suffix=suffix,
    )
    return fine_tune(request)


@contextmanager
def in_home(home: Path, models_dir: Path | None = None) -> Iterator[None]:
    """loraflow's settings on ``home`` (and ``models_dir``, given) for a block: a session- or
    module-scoped fixture's set-up, which runs outside any test's monkeypatch. The variables
    are as they were afterwards."""
    import pytest

    from loraflow.settings import reset

    try:
        with pytest.MonkeyPatch.context() as mp:  # restores the variables on the way out
            mp.setenv("LORAFLOW_HOME", str(home))
            if models_dir is not None:
                mp.setenv("LORAFLOW_MODELS_DIR", str(models_dir))
            reset()
            yield
    finally:
        reset()  # after the variables are back


def stack_env(home: Path, ports: dict[str, int], **more: str) -> dict[str, str]:
    """The environment of a `loraflow up` in ``home`` on ``ports`` (PREFECT, MLFLOW, SERVE):
    this one without loraflow's or Prefect's API and database settings, plus ``more``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LORAFLOW_", "PREFECT_API", "PREFECT_SERVER_DATABASE"))
    }
    env |= {f"LORAFLOW_STACK__{name}_PORT": str(port) for name, port in ports.items()}
    return env | {"LORAFLOW_HOME": str(home), **more}
