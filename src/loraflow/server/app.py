"""The HTTP service: LLM Engine's REST API and OpenAI's, over the same SDK and engine.

Every success is status 200; every error is ``{"detail": "<message>"}`` with 400, 401, 404,
413, 429 or 5xx, which LLM Engine's client maps to its typed errors. Keys are checked in
constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi_offline import FastAPIOffline

from loraflow import __version__
from loraflow.errors import LoraflowError
from loraflow.server import aixplain_api, llmengine, openai_api
from loraflow.server.errors import PayloadTooLarge, Unauthorized, error_response, install_errors

UPLOAD_PATHS = ("/v1/files",)
OPEN_PATHS = ("/healthz", "/healthcheck", "/readyz")
access_log = logging.getLogger("loraflow.access")
SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "basic": {"type": "http", "scheme": "basic", "description": "the key as the username"},
    "bearer": {"type": "http", "scheme": "bearer"},
}


class ApiKeys:
    """The accepted keys; a request shows one as x-api-key, Basic username or Bearer token."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    def presented(self, request: Request) -> list[str]:
        found = []
        if key := request.headers.get("x-api-key"):
            found.append(key)
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            found.append(value.strip())
        elif scheme.lower() == "basic" and value:
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                found.append(base64.b64decode(value).decode().partition(":")[0])
        return found

    def check(self, request: Request) -> None:
        # compare against every key, whatever matched, so timing says nothing about them
        ok = False
        for candidate in self.presented(request):
            for key in self._keys:
                ok |= hmac.compare_digest(candidate.encode(), key)
        if not ok:
            raise Unauthorized()


class BodyLimit:
    """ASGI middleware: bodies above their limit get 413, counted as they stream in: uploads
    above ``upload_limit`` bytes, any other request (a JSON body) above ``request_limit``."""

    def __init__(self, app: Any, upload_limit: int, request_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.request_limit = request_limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].endswith(UPLOAD_PATHS)
        limit = self.upload_limit if upload else self.request_limit
        refusal = (
            f"the file is larger than the limit of {limit:,} bytes (max_upload_bytes)"
            if upload
            else f"the request body is larger than the limit of {limit:,} bytes (max_request_bytes)"
        )
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, refusal)
            return
        seen = 0
        exceeded = replaced = False

        async def limited() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise PayloadTooLarge(refusal)
            return message

        async def guarded_send(sent: Any) -> None:
            # a parser that swallowed the error answers 400: the client gets the 413 instead
            nonlocal replaced
            if not exceeded:
                await send(sent)
            elif not replaced:
                replaced = True
                await _reject(send, refusal)

        try:
            await self.app(scope, limited, guarded_send)
        except PayloadTooLarge:
            if not replaced:
                await _reject(send, refusal)


class AccessLog:
    """ASGI middleware: one JSON line a request on the ``loraflow.access`` logger: method,
    path (without the query), status, milliseconds to the end of the response (a stream's
    whole length) and the client's address. Never a header or a body, so never a key."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("", 0)
            line = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "client": f"{client[0]}:{client[1]}",
            }
            access_log.info(json.dumps(line))


async def _reject(send: Any, message: str) -> None:
    response = error_response(413, message)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def create_app(api_keys: list[str], max_upload_bytes: int | None = None) -> FastAPI:
    """The service: LLM Engine routes under /v1 and /v2, OpenAI routes, aiXplain's execute
    and poll under /api/v1, open health checks.

    ``api_keys`` must not be empty: every route but the health checks needs one of them.
    """
    from loraflow.settings import get_settings

    if not api_keys:
        raise LoraflowError("the HTTP service needs at least one API key")
    keys = ApiKeys(api_keys)

    def authorize(request: Request) -> None:
        keys.check(request)

    # /docs with Swagger UI's files served from the package: it works with no internet
    app = FastAPIOffline(title="loraflow", version=__version__, docs_url="/docs", redoc_url=None)
    install_errors(app)
    protected = [Depends(authorize)]
    app.include_router(llmengine.router, dependencies=protected)
    app.include_router(openai_api.router, dependencies=protected)
    app.include_router(aixplain_api.router, dependencies=protected)

    @app.get("/healthz")
    @app.get("/healthcheck")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    def readyz() -> Any:
        """200 when every request could be served now; else 503 saying why (warming up, a
        vLLM restarting): an answer, not a fault, so it is not logged."""
        from loraflow import backends
        from loraflow.storage import get_store

        get_store().exists("readyz")  # the object store answers
        if found := backends.problems():
            return error_response(503, "; ".join(found))
        return {"status": "ready"}

    _metrics(app, protected)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    settings = get_settings()
    app.add_middleware(AccessLog)
    app.add_middleware(
        BodyLimit,
        upload_limit=max_upload_bytes or settings.max_upload_bytes,
        request_limit=settings.max_request_bytes,
    )
    return app


def _metrics(app: FastAPI, protected: list[Any]) -> None:
    """``/metrics`` for Prometheus (the key as a bearer token in the scrape config): this app's
    HTTP requests by route and status with latency histograms (a registry of its own: one
    process may build several apps), then the process's: loraflow's (``loraflow.metrics``:
    tokens, completions, time to first token, queue depth, batch size), Python's."""
    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_fastapi_instrumentator import Instrumentator

    import loraflow.metrics  # noqa: F401 - registers loraflow's metrics before the first scrape

    http = CollectorRegistry()
    excluded = ["/metrics", "/docs", *OPEN_PATHS]
    Instrumentator(excluded_handlers=excluded, registry=http).instrument(app)

    @app.get("/metrics", include_in_schema=False, dependencies=protected)
    def metrics() -> Response:
        body = generate_latest(http) + generate_latest(REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, saying what this service answers: a bad request is a 400 with
    ``{"detail": message}`` (never FastAPI's 422), as LLM Engine's client expects, and every
    route but the health checks takes an API key in any of three places."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    error = {"$ref": "#/components/schemas/ErrorDetail"}

    def answer(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": error}}}

    for route, path in schema.get("paths", {}).items():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["400"] = answer("Bad request: the message names the field and what to do")
            if "requestBody" in operation:
                responses["413"] = answer("The body is larger than the server's limit")
            if route not in ("/healthz", "/healthcheck"):
                responses["503"] = answer(
                    "Storage, Prefect or MLflow is not reachable: the message says what to start"
                )
            if route in OPEN_PATHS:
                operation["security"] = []
            else:
                responses["401"] = answer("Missing or wrong API key")
    schema["security"] = [{name: []} for name in SECURITY_SCHEMES]
    schema["components"] = schema.get("components", {}) | {"securitySchemes": SECURITY_SCHEMES}
    components = schema["components"].setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components["ErrorDetail"] = {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    }
    app.openapi_schema = schema
    return schema
