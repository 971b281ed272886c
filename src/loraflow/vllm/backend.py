"""The vllm completion backend: loraflow's completion path in front of a vLLM server.

loraflow keeps what makes a completion loraflow's: prompts are encoded here with the base
model's tokenizer and chat template (``loraflow.models.prompts``, as for the in-process
engine and as in training) and sent to vLLM as token ids; model references resolve here to
the exact fine-tune; requests are checked here. vLLM generates: each request is one streamed
``/v1/completions`` call whose chunks become the same token events the engine yields, so the
SDK, the ``complete`` task, batch jobs and both HTTP APIs work unchanged.

Adapters follow the registry: a fine-tune's adapter is copied from the object store to the
local adapter cache and loaded into vLLM (``/v1/load_lora_adapter``) on first use; at most
``serving.vllm_max_adapters`` stay loaded, the least recently used (and idle) one going first.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.engine.generation import Request, TokenEvent
from loraflow.errors import InvalidRequestError, LoraflowError, NotFoundError, UnavailableError
from loraflow.models import model_revision, prepare, resolve_model
from loraflow.models.prompts import PromptedBackend, Prompts
from loraflow.settings import get_settings
from loraflow.vllm.process import VllmServer

log = logging.getLogger(__name__)
_DONE = object()


class VllmBackend(PromptedBackend):
    """Serves one base model and its adapters through a vLLM server."""

    def __init__(self, base: str) -> None:
        import httpx

        spec = resolve_model(base)
        path = prepare(spec)
        self.base = spec.name
        self.revision = model_revision(path)
        self.prompts = Prompts.load(spec, path)
        self.server = VllmServer(self.base, path)
        self.client = httpx.Client(timeout=httpx.Timeout(30.0, read=None))
        self.adapters: OrderedDict[str, int] = OrderedDict()  # name -> requests running
        self._paths: dict[str, Path] = {}  # name -> local adapter directory
        self._lock = threading.Lock()
        self.server.ensure()

    # ---- the CompletionBackend protocol (encode and check: PromptedBackend) -----------

    def submit(self, requests: list[Request], timeout: float | None = None) -> Iterator[TokenEvent]:
        """Token events of ``requests``, each streamed from vLLM (which batches them with
        everyone's); closing the iterator stops them all."""
        call = _Call(
            url=self.server.ensure(),
            deadline=None if timeout is None else time.monotonic() + timeout,
        )
        threads = [
            threading.Thread(target=self._run, args=(call, k, r), daemon=True)
            for k, r in enumerate(requests)
        ]
        self._using([r.adapter for r in requests], +1)
        try:
            for t in threads:
                t.start()
            running = len(threads)
            while running:
                item = call.events.get()
                if item is _DONE:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            call.stop.set()
            self._using([r.adapter for r in requests], -1)

    # ---- one request ------------------------------------------------------------------

    def _body(self, r: Request) -> dict[str, Any]:
        s = r.sampling
        return {
            "model": r.adapter or self.base,
            "prompt": r.prompt_ids,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": 1.0 if s.top_p is None else s.top_p,
            "top_k": -1 if s.top_k is None else s.top_k,
            "seed": s.seed,
            "stop": list(s.stop_sequences) or None,
            "logprobs": 1 if s.return_token_log_probs else None,
            "return_token_ids": True,
            "skip_special_tokens": True,
            "stream": True,
        }

    def _run(self, call: _Call, index: int, r: Request) -> None:
        try:
            for attempt in (1, 2):
                try:
                    self._stream(call, index, r)
                    return
                except _AdapterGone:
                    if attempt == 2 or r.adapter is None:
                        raise NotFoundError(
                            f"adapter {r.adapter!r} is not loaded on {self.base}"
                        ) from None
                    self._reload(r.adapter)  # vLLM lost it (restarted): load and retry once
        except LoraflowError as exc:
            call.events.put(exc)
        except Exception as exc:
            call.events.put(self._unavailable(call.url, exc))
        finally:
            call.events.put(_DONE)

    def _stream(self, call: _Call, index: int, r: Request) -> None:
        count, out = 0, call.events
        url = f"{call.url}/v1/completions"
        with self.client.stream("POST", url, json=self._body(r)) as response:
            if response.status_code != 200:
                response.read()
                raise self._refusal(response, r)
            for line in response.iter_lines():
                if call.stop.is_set() or (r.cancelled is not None and r.cancelled.is_set()):
                    return
                if call.deadline is not None and time.monotonic() > call.deadline:
                    out.put(TokenEvent(index, "", None, None, True, "timeout", count))
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise _stream_error(chunk["error"], self.base)
                for event in _events(index, chunk, count):
                    count = event.completion_tokens
                    out.put(event)
        raise UnavailableError(f"vLLM ended a stream of {self.base} without finishing it")

    def _refusal(self, response: Any, r: Request) -> LoraflowError:
        try:
            message = response.json().get("error", {}).get("message") or response.text
        except ValueError:
            message = response.text
        message = str(message)[:400]
        if response.status_code == 404 or "does not exist" in message:
            if r.adapter is not None:
                return _AdapterGone(message)
            return NotFoundError(f"model: vLLM does not serve {self.base}: {message}")
        if response.status_code < 500:
            return InvalidRequestError(f"vLLM refused the request: {message}")
        return UnavailableError(f"vLLM failed on {self.base} ({response.status_code}): {message}")

    def _unavailable(self, url: str, exc: Exception) -> UnavailableError:
        return UnavailableError(
            f"the vLLM server of {self.base} at {url} stopped answering "
            f"({type(exc).__name__}: {exc}); retry: loraflow restarts a server it started"
        )

    # ---- adapters ---------------------------------------------------------------------

    def load_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load a fine-tune's adapter into vLLM (a no-op when it is loaded), unloading the
        least recently used idle adapter beyond ``serving.vllm_max_adapters``."""
        with self._lock:
            if name in self.adapters:
                self.adapters.move_to_end(name)
                return
        settings = get_settings().serving
        shared = settings.vllm_adapter_dir if settings.vllm_url else None
        lora_path = str(Path(shared) / adapter_dir.name) if shared else str(adapter_dir)
        url = self.server.ensure()
        response = self.client.post(
            f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": lora_path}
        )
        if response.status_code != 200 and "already" not in response.text:
            raise UnavailableError(
                f"vLLM could not load the adapter of {name} from {lora_path}: "
                f"{response.text[:400]} (a LoRA rank above serving.vllm_max_lora_rank, or a "
                "path the vLLM server cannot read: serving.vllm_adapter_dir)"
            )
        with self._lock:
            self.adapters[name] = self.adapters.get(name, 0)
            self.adapters.move_to_end(name)
            evicted = self._evictable(settings.vllm_max_adapters)
        for old in evicted:
            self.unload_adapter(old)
        self._paths[name] = adapter_dir

    def _evictable(self, keep: int) -> list[str]:
        idle = [n for n, running in self.adapters.items() if running == 0]
        excess = len(self.adapters) - keep
        return idle[: max(excess, 0)]

    def unload_adapter(self, name: str) -> None:
        """Unload an adapter from vLLM (a no-op for one not loaded)."""
        with self._lock:
            if self.adapters.pop(name, None) is None:
                return
        try:
            self.client.post(
                f"{self.server.ensure()}/v1/unload_lora_adapter", json={"lora_name": name}
            )
        except Exception as exc:  # vLLM down: nothing is loaded there any more
            log.warning("could not unload %s from vLLM: %s", name, exc)
        log.info("unloaded %s from the vLLM server of %s", name, self.base)

    def _reload(self, name: str) -> None:
        path = self._paths.get(name)
        with self._lock:
            self.adapters.pop(name, None)
        if path is None:
            raise NotFoundError(f"adapter {name!r} is not loaded on {self.base}")
        self.load_adapter(name, path)

    def _using(self, adapters: list[str | None], delta: int) -> None:
        with self._lock:
            for name in adapters:
                if name is not None and name in self.adapters:
                    self.adapters[name] += delta
                    if delta > 0:
                        self.adapters.move_to_end(name)


@dataclass
class _Call:
    """One ``submit``: where its requests go, when they end, and what they hand back."""

    url: str
    deadline: float | None
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)


class _AdapterGone(LoraflowError):
    status = 404


def _events(index: int, chunk: dict[str, Any], count: int) -> Iterator[TokenEvent]:
    """The token events of one streamed chunk: one per token; the chunk's text rides on its
    last token, so the texts join to exactly what vLLM generated."""
    for choice in chunk.get("choices", []):
        ids = choice.get("token_ids") or []
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens") or [None] * len(ids)
        values = logprobs.get("token_logprobs") or [None] * len(ids)
        reason = choice.get("finish_reason")
        n = max(len(ids), 1 if (choice.get("text") or reason) else 0)
        for k in range(n):
            last = k == n - 1
            count += 1 if k < len(ids) else 0
            yield TokenEvent(
                index=index,
                text=choice.get("text", "") if last else "",
                token=tokens[k] if k < len(tokens) else None,
                log_prob=values[k] if k < len(values) else None,
                finished=last and reason is not None,
                finish_reason=_reason(reason) if last else None,
                completion_tokens=count,
                token_id=ids[k] if k < len(ids) else None,
            )


def _reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _stream_error(error: dict[str, Any], base: str) -> LoraflowError:
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message", error) if isinstance(error, dict) else error)[:400]
    if isinstance(code, int) and 400 <= code < 500:
        return InvalidRequestError(f"vLLM refused the request: {message}")
    return UnavailableError(f"vLLM failed while generating with {base}: {message}")
