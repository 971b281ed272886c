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

import sys
from collections.abc import Iterator
from importlib import import_module
from typing import Any, Protocol

from loraflow.errors import ConfigError
from loraflow.settings import get_settings

# backend name -> its module: resolve_served(reference) -> (backend, adapter), unload(name)
BACKENDS = {"engine": "loraflow.engine.engine", "vllm": "loraflow.vllm"}


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


def start() -> None:
    """At a server's start: fail early, naming the setting, when the backend cannot serve (no
    vLLM to start, a vLLM URL that does not answer), and load what serving.preload names."""
    module = _module()
    if hasattr(module, "check_setup"):
        module.check_setup()
    for reference in get_settings().serving.preload:
        preload(reference)


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
