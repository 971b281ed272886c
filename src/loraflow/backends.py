"""The completion backend seam: what generates the tokens behind every completion path.

``loraflow.completion`` (and so the SDK, the ``complete`` task, batch jobs and both HTTP APIs)
asks ``resolve(reference)`` for the backend serving a model and the adapter to apply, then
only encodes, checks and submits through the ``CompletionBackend`` protocol. Settings choose
the backend (``serving.backend``); the in-process engine is the first member.

Adding a backend is one module with a ``resolve_served(reference)`` returning an object that
meets ``CompletionBackend``, and one line in ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import import_module
from typing import Any, Protocol

from loraflow.errors import ConfigError
from loraflow.settings import get_settings

# backend name -> "module:function" resolving a model reference to (backend, adapter)
BACKENDS = {"engine": "loraflow.engine.engine:resolve_served"}


class CompletionBackend(Protocol):
    """A server of one base model and its adapters, as the completion path uses it."""

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


def resolve(reference: str) -> tuple[CompletionBackend, str | None]:
    """The backend serving model ``reference`` (base, fine-tune, alias, version) and the
    adapter to apply (None: the bare base). NotFoundError for an unknown model."""
    name = get_settings().serving.backend
    if name not in BACKENDS:
        raise ConfigError(f"serving.backend: {name!r} is not one of {', '.join(BACKENDS)}")
    module, _, function = BACKENDS[name].partition(":")
    resolved: tuple[CompletionBackend, str | None] = getattr(import_module(module), function)(
        reference
    )
    return resolved
