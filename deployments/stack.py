"""The local stack behind ``loraflow up``/``down``/``status`` (and ``make up``/``make down``).

Four services on 127.0.0.1, each a child process in its own session with its log and PID file
under ``<home>/stack/``:

- ``prefect``: a Prefect server on SQLite (``<home>/stack/prefect/prefect.db``), UI included;
- ``worker``: a Prefect worker for loraflow's process work pool (deployments are applied first);
- ``mlflow``: the MLflow UI on loraflow's tracking database (only when that is a local file);
- ``serve``: loraflow's HTTP service (LLM Engine and OpenAI APIs).

``up`` is idempotent: a service already running (its PID file names a live process started
as that service) is left alone. ``down`` stops only processes whose PID files ``up`` wrote.
Nothing else needs the stack: without it loraflow uses the embedded defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow import jobs, pidfile
from loraflow.errors import LoraflowError
from loraflow.settings import DEFAULT_CONFIG_FILE, Settings, get_settings, new_api_key

HOST = "127.0.0.1"
STOP_SECONDS = 40.0  # a worker gives its flow runs 30 s to end after SIGTERM


class StackError(LoraflowError):
    """A stack service could not start or stop; the message says which and why."""

    status = 500


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int | None = None
    url: str | None = None  # what a user opens
    health: str | None = None  # GET that answers 200 when it is ready
    ready: Callable[[], bool] | None = None  # readiness without a port (the worker)
    needs: list[str] = field(default_factory=list)  # services ``up`` starts before this one


@dataclass
class Status:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    url: str | None
    log: Path


class Stack:
    """The stack of one loraflow home."""

    def __init__(self, settings: Settings | None = None, pool: str = "loraflow") -> None:
        self.settings = settings or get_settings()
        self.dir = self.settings.home / jobs.STACK_DIR
        self.pool = pool

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.settings.stack.prefect_port}/api"

    def services(self) -> list[Service]:
        """The services in start order (``down`` stops them in reverse)."""
        ports, py = self.settings.stack, sys.executable
        base = self._base_env()
        client = base | {"PREFECT_API_URL": self.api_url}
        prefect = f"-m prefect server start --host {HOST} --port {ports.prefect_port}"
        worker = f"-m prefect worker start --pool {self.pool} --type process --name "
        mlflow = f"-m mlflow server --host {HOST} --port {ports.mlflow_port} --workers 1"
        mlflow += " --backend-store-uri"
        found = [
            Service(
                "prefect",
                [py, *prefect.split()],
                base,
                port=ports.prefect_port,
                url=f"http://{HOST}:{ports.prefect_port}",
                health=f"{self.api_url}/health",
            ),
            Service(
                "worker",
                [py, *worker.split(), f"loraflow-{socket.gethostname()}"],
                client,
                ready=self._worker_online,
                needs=["prefect"],
            ),
        ]
        if self.settings.tracking_uri.startswith("sqlite:"):
            found.append(
                Service(
                    "mlflow",
                    [py, *mlflow.split(), self.settings.tracking_uri],
                    base,
                    port=ports.mlflow_port,
                    url=f"http://{HOST}:{ports.mlflow_port}",
                    health=f"http://{HOST}:{ports.mlflow_port}/health",
                )
            )
        found.append(
            Service(
                "serve",
                [py, "-m", "loraflow", "serve", "--host", HOST, "--port", str(ports.serve_port)],
                client | self._api_key_env(),
                port=ports.serve_port,
                url=f"http://{HOST}:{ports.serve_port}",
                # ready: its champions are loaded, so the first completion does not wait
                health=f"http://{HOST}:{ports.serve_port}/readyz",
                needs=["prefect"],
            )
        )
        return found

    # -- up / down / status ------------------------------------------------------------------

    def up(
        self, announce: Callable[[str], None] = print, deploy: Callable[[], Any] | None = None
    ) -> None:
        """Start what is not running, wait until each is healthy; ``deploy`` runs once the
        Prefect server is up and before the worker starts. Services start in two waves, each
        wave's at once: those that need nothing (Prefect's server, MLflow), then those that
        need Prefect's API (the worker, serve). On a failure, stops what this call started
        and raises StackError with the service's last log lines."""
        from loraflow.files import housekeeping

        self.dir.mkdir(parents=True, exist_ok=True)
        removed = housekeeping(self.settings)
        if removed:
            announce(f"storage: removed {len(removed)} leftover object(s) of failed uploads")
        services = self.services()
        waves = [[s for s in services if not s.needs], [s for s in services if s.needs]]
        started: list[Service] = []
        try:
            for wave in waves:
                begun = []
                for service in wave:
                    if self._process(service.name) is not None:
                        announce(f"{service.name}: already running ({self._where(service)})")
                    else:
                        self._start(service)
                        started.append(service)
                        begun.append(service)
                for service in begun:
                    self._wait_healthy(service)
                    announce(f"{service.name}: started ({self._where(service)})")
                if wave is waves[0] and deploy is not None:
                    deploy()
        except BaseException:
            for service in reversed(started):
                self._stop(service.name)
            raise

    def down(self, announce: Callable[[str], None] = print) -> None:
        """Stop the services ``up`` started (by their PID files); others are left alone. The
        others stop at once (a worker takes seconds to hand back its runs), Prefect's server
        last, so the worker can still report to it."""
        names = [s.name for s in reversed(self.services())]
        first = [n for n in names if n != "prefect"]
        with ThreadPoolExecutor(len(first)) as pool:
            stopped = dict(zip(first, pool.map(self._stop, first), strict=True))
        stopped |= {n: self._stop(n) for n in names if n == "prefect"}
        for name in names:
            announce(f"{name}: {'stopped' if stopped[name] else 'not running'}")

    def status(self) -> list[Status]:
        """Each service's state; the health checks run at once (each waits at most 2 s)."""

        def one(s: Service) -> Status:
            proc = self._process(s.name)
            return Status(
                name=s.name,
                running=proc is not None,
                healthy=proc is not None and self._healthy(s),
                pid=proc.pid if proc is not None else None,
                url=s.url,
                log=self._log(s.name),
            )

        services = self.services()
        with ThreadPoolExecutor(len(services)) as pool:
            return list(pool.map(one, services))

    # -- processes ---------------------------------------------------------------------------

    def _start(self, service: Service) -> None:
        if service.port is not None and _listening(service.port):
            raise StackError(
                f"{service.name}: {HOST}:{service.port} is already in use by a program "
                f"`loraflow up` did not start; stop it or choose another port "
                f"(LORAFLOW_STACK__{service.name.upper()}_PORT)"
            )
        with self._log(service.name).open("ab") as log:
            log.write(f"\n--- loraflow up {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                service.command,
                env=service.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: down stops its children too
            )
        # the Prefect server's record names its API: loraflow finds the stack's server by it
        url = self.api_url if service.name == "prefect" else service.url
        pidfile.write(self._pid_file(service.name), proc.pid, command=service.command, url=url)

    def _wait_healthy(self, service: Service) -> None:
        def check() -> bool | None:
            if self._process(service.name) is None:
                raise StackError(
                    f"{service.name} exited while starting; the end of "
                    f"{self._log(service.name)}:\n{self._tail(service.name)}"
                )
            return True if self._healthy(service) else None

        try:
            jobs.poll(check, self.settings.stack.start_timeout, lambda: service.name)
        except jobs.JobTimeoutError:
            raise StackError(
                f"{service.name} was not healthy within "
                f"{self.settings.stack.start_timeout:.0f} s; the end of "
                f"{self._log(service.name)}:\n{self._tail(service.name)}"
            ) from None

    def _healthy(self, service: Service) -> bool:
        if service.ready is not None:
            return service.ready()
        try:
            with urllib.request.urlopen(str(service.health), timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _worker_online(self) -> bool:
        """A worker of the pool is ONLINE: Prefect's REST API over plain HTTP (importing
        Prefect's client would cost ``loraflow status`` seconds)."""
        request = urllib.request.Request(
            f"{self.api_url}/work_pools/{self.pool}/workers/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                workers = json.load(response)
        except (OSError, ValueError):
            return False
        return any(w.get("status") == "ONLINE" for w in workers)

    def _process(self, name: str) -> Any:
        """The live process of ``name`` that ``up`` started, or None (a stale file is removed)."""
        return pidfile.process(self._pid_file(name))

    def _stop(self, name: str) -> bool:
        """Stop ``name``'s process group: SIGTERM, then SIGKILL after STOP_SECONDS."""
        import psutil

        proc = self._process(name)
        if proc is None:
            return False
        group = [proc, *proc.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(group, timeout=STOP_SECONDS)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        self._pid_file(name).unlink(missing_ok=True)
        return True

    # -- files and environment ---------------------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def _log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def _tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self._log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _where(self, service: Service) -> str:
        proc = self._process(service.name)
        pid = f"pid {proc.pid}" if proc is not None else "not running"
        return f"{service.url}, {pid}" if service.url else pid

    def _base_env(self) -> dict[str, str]:
        """The environment every service gets: this one, pinned to this home and its files."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
        env |= {
            # its database is the one Prefect's ephemeral API uses while the stack is down
            "PREFECT_HOME": str(jobs.prefect_database(self.settings).parent),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "LORAFLOW_HOME": str(self.settings.home),
            "PYTHONUNBUFFERED": "1",
        }
        config = os.environ.get("LORAFLOW_CONFIG") or (
            str(DEFAULT_CONFIG_FILE.resolve()) if DEFAULT_CONFIG_FILE.is_file() else None
        )
        if config:  # flow runs start in other directories: name the settings file outright
            env["LORAFLOW_CONFIG"] = config
        return env

    def _api_key_env(self) -> dict[str, str]:
        """The HTTP service's keys: the configured ones, else one kept in ``api-key`` (0600)."""
        if self.settings.api_keys:
            return {}
        return {"LORAFLOW_API_KEYS": self.api_key()}

    def api_key(self) -> str:
        """The key the stack's HTTP service accepts when none is configured (made once)."""
        path = self.dir / jobs.API_KEY_FILE
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_api_key())
        return path.read_text().strip()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0
