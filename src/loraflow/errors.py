"""loraflow's exceptions: one base class, a few kinds a caller can act on."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

    from loraflow.data.report import ValidationReport


class LoraflowError(Exception):
    """Base class of every error loraflow raises on purpose; its message says what to do.

    ``status`` is the HTTP status the service answers with, the message as its detail: below
    500 the caller can fix it; 500 and above are faults of the server or what it relies on.
    """

    status: int = 400


class ConfigError(LoraflowError, ValueError):
    """A setting or config file is wrong; the message names the field and the fix."""

    status = 500


class InvalidRequestError(LoraflowError, ValueError):
    """An argument is malformed (an id, a name, a parameter); nothing was changed."""


class NotFoundError(LoraflowError, LookupError):
    """The named file, job or model does not exist."""

    status = 404


class StorageError(LoraflowError):
    """The object store failed after retries; no partial object was left behind."""

    status = 503


class UnavailableError(LoraflowError):
    """Something loraflow relies on is not there (a deployment, a worker, a model's weights)."""

    status = 503


class DataValidationError(LoraflowError, ValueError):
    """A dataset failed validation. ``report`` lists every failing row and check."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.describe())


def describe_errors(
    errors: Iterable[Mapping[str, Any]], whole: str, limit: int | None = None, inputs: bool = False
) -> str:
    """pydantic's (or FastAPI's) problems as ``field.path: message``, joined by ``; ``: the
    one formatter of validation errors. ``whole`` names a problem of the object itself;
    ``limit`` keeps the first ones; ``inputs`` adds the value that was given."""
    shown = []
    for error in list(errors)[:limit]:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query")]
        field = ".".join(loc) or whole
        text = f"{field}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"
        if inputs and "input" in error and loc:
            text += f" (got {error['input']!r})"
        shown.append(text)
    return "; ".join(shown)


def field_problems(exc: ValidationError, whole: str) -> str:
    """Every problem pydantic found (``whole`` names a problem of the object itself)."""
    return describe_errors(exc.errors(), whole)


def first_problem(exc: ValidationError) -> str:
    """The first problem pydantic found, with the value given: for a request's answer."""
    return describe_errors(exc.errors(), "request", limit=1, inputs=True)


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it masked (``https://***@host``)."""
    return _USERINFO.sub(r"\1***@", text)


def shorten(value: str, limit: int = 80) -> str:
    """``value``, cut to ``limit`` characters with its length said: for echoing input back."""
    return value if len(value) <= limit else f"{value[:limit]}… ({len(value):,} characters)"
