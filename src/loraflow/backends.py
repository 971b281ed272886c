"""The completion backend seam: what generates the tokens behind every completion path.

``loraflow.completion`` (and so the SDK, the ``complete`` task, batch jobs and both HTTP APIs)
asks ``resolve(reference)`` for the backend serving a model and the adapter to apply, then
only encodes, checks and submits through the ``CompletionBackend`` protocol. Settings choose
the backend (``serving.backend``); the in-process engine is the first member.

Adding a backend is one module with ``resolve_served(reference)`` returning an object that
meets ``CompletionBackend`` (and ``unload(name)``, dropping a deleted fine-tune), and one line
in ``BACKENDS``. Members: ``engine`` (in process) and ``vllm`` (a vLLM server per base model).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from importlib import import_module
from typing import Any, Protocol

from loraflow.errors import ConfigError
from loraflow.settings import get_settings

# backend name -> its module: resolve_served(reference) -> (backend, adapter), unload(name)
BACKENDS = {"engine": "loraflow.engine.engine", "vllm": "loraflow.vllm"}
_WARMING: dict[str, float] = {}  # what ``start`` is loading -> since when (monotonic)
PENDING = "the served models"
log = logging.getLogger(__name__)


class CompletionBackend(Protocol):
    """A server of one base model and its adapters, as the completion path uses it."""

    base: str  # the base model's zoo name

    @property
    def context(self) -> int:
        """The base model's context window, in tokens."""
        ...

    def encode(
        self, prompt: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> list[int]:
        """Prompt token ids; chat models template a prompt as one user turn."""
        ...

    def check(self, request: Any, field: str = "prompt") -> None:
        """Raise InvalidRequestError / NotFoundError when ``request`` cannot run here."""
        ...

    def submit(self, requests: list[Any], timeout: float | None = None) -> Iterator[Any]:
        """Token events of checked requests, batched with other callers' (closing cancels)."""
        ...


def _module() -> Any:
    name = get_settings().serving.backend
    if name not in BACKENDS:
        raise ConfigError(f"serving.backend: {name!r} is not one of {', '.join(BACKENDS)}")
    return import_module(BACKENDS[name])


def resolve(reference: str) -> tuple[CompletionBackend, str | None]:
    """The backend serving model ``reference`` (base, fine-tune, alias, version) and the
    adapter to apply (None: the bare base). NotFoundError for an unknown model."""
    resolved: tuple[CompletionBackend, str | None] = _module().resolve_served(reference)
    return resolved


def preload(reference: str) -> None:
    """Make ``reference`` ready to serve now (its base loaded or started, its adapter loaded),
    so its first request does not wait."""
    resolve(reference)


def start() -> threading.Thread | None:
    """At a server's start: fail early, naming the setting, when the backend cannot serve (no
    vLLM to start, a vLLM URL that does not answer); then warm the served models (``warm_set``)
    in a thread, returned, while the server answers: ``problems`` says "warming" until they
    are loaded. A model that fails to load is logged and left to load on first use."""
    module = _module()
    if hasattr(module, "check_setup"):
        module.check_setup()
    if get_settings().serving.preload == []:
        return None
    _WARMING[PENDING] = time.monotonic()  # until the registry says which they are
    thread = threading.Thread(target=_warm, name="loraflow-warm", daemon=True)
    thread.start()
    return thread


def warm_set() -> list[str]:
    """What a server loads at start: ``serving.preload`` when set, else each family's
    champion (its base model comes with it)."""
    preload = get_settings().serving.preload
    if preload is not None:
        return list(preload)
    from loraflow import registry

    try:
        return registry.champions()
    except Exception as exc:  # the registry down: serve anyway, loading on first use
        log.warning("not warming the champions: the registry did not answer (%s)", exc)
        return []


def _warm() -> None:
    references = warm_set()
    _WARMING.update(dict.fromkeys(references, _WARMING.get(PENDING, time.monotonic())))
    _WARMING.pop(PENDING, None)
    for reference in references:
        started = time.monotonic()
        try:
            preload(reference)
            log.info("warm: %s loaded in %.1f s", reference, time.monotonic() - started)
        except Exception as exc:
            log.error("warm: could not load %s (it loads on first use instead): %s", reference, exc)
        finally:
            _WARMING.pop(reference, None)


def warm(reference: str) -> None:
    """Load ``reference`` where it is served for every process (a shared vLLM server) so its
    first request there does not wait; a no-op for the in-process engine."""
    module = _module()
    if hasattr(module, "warm"):
        module.warm(reference)


def problems() -> list[str]:
    """What keeps the backend from serving now (``/readyz``); empty when it can."""
    module: Any = sys.modules.get(BACKENDS.get(get_settings().serving.backend, ""))
    found: list[str] = module.problems() if hasattr(module, "problems") else []
    if warming := dict(_WARMING):
        since = time.monotonic() - min(warming.values())
        found.append(f"warming up: loading {', '.join(warming)} ({since:.0f} s so far)")
    return found


def unload(name: str) -> None:
    """Drop a deleted fine-tune from every backend of this process that may hold it."""
    for module_name in BACKENDS.values():
        module = sys.modules.get(module_name)  # a backend never imported holds nothing
        if module is not None:
            module.unload(name)


def framework() -> str:
    """What generates completions, as LLM Engine's ``inference_framework`` names it."""
    return "vllm" if get_settings().serving.backend == "vllm" else "text_generation_inference"
