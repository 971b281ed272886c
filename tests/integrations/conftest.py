"""The integrations' tests share the service of tests/server (a real uvicorn on 127.0.0.1)."""

from tests.server.conftest import API_KEY, server  # noqa: F401

__all__ = ["API_KEY"]
