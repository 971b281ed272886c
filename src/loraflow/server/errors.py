"""Errors as LLM Engine's client expects them: ``{"detail": "<message>"}`` with a status.

A ``LoraflowError`` answers with its own ``status`` and message, whatever raised it: below 500
the caller can fix it; 500 and above are the server's faults, logged with their traceback and
still told (their messages say what to do, e.g. "run make up"). Anything else is an opaque 500
with a reference to the server log.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraflow.errors import LoraflowError, describe_errors

log = logging.getLogger("loraflow.server")
UNAUTHORIZED = "missing or wrong API key: send it as x-api-key, HTTP Basic username or Bearer"


class Unauthorized(LoraflowError):
    status = 401


class PayloadTooLarge(LoraflowError):
    status = 413


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error: a LoraflowError's own, 504 for a timeout, else 500."""
    if isinstance(exc, LoraflowError):
        return exc.status
    return 504 if isinstance(exc, TimeoutError) else 500


def message_of(exc: BaseException) -> str:
    """What the client is told: a LoraflowError's message; nothing of other errors."""
    return str(exc) if isinstance(exc, LoraflowError) else "internal error"


def error_response(
    status: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))


ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}
# for a route's ``responses``: what the OpenAPI schema documents beside 200 and 400
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Not found: the message names what", "content": ERROR_BODY}
}

NOT_UNICODE = (
    "the request holds text that is not valid Unicode (a lone surrogate such as \\ud800); "
    "send UTF-8 text"
)


def install_errors(app: FastAPI) -> None:
    """Map every error to ``{"detail": ...}`` with the status LLM Engine's client expects."""

    @app.exception_handler(LoraflowError)
    async def _loraflow(request: Request, exc: LoraflowError) -> JSONResponse:
        if exc.status == 401:
            return error_response(
                401, UNAUTHORIZED, {"WWW-Authenticate": 'Basic realm="loraflow", Bearer'}
            )
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        return error_response(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first route's methods only
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(UnicodeError)
    async def _unicode(request: Request, exc: UnicodeError) -> JSONResponse:
        return error_response(400, NOT_UNICODE)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s: %s", ref, exc, exc_info=exc)
        return error_response(
            500, f"internal error (reference {ref}); the server log has the cause"
        )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this request's path."""
    from starlette.routing import Match

    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    ]


def describe_validation(errors: Any) -> str:
    """The first body/query problem as ``field: message``."""
    if not errors:
        return "invalid request"
    error = errors[0]
    if error.get("type") == "json_invalid":
        found = error.get("ctx", {}).get("error", error.get("msg", "invalid"))
        return f"the body is not valid JSON: {found}"
    return describe_errors(errors, "body", limit=1)
