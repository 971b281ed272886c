"""Object storage: one interface (``ObjectStore``), a local directory and any S3 API behind it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from loraflow.settings import Settings, get_settings, on_reset
from loraflow.storage.base import ObjectInfo, ObjectStore, check_key

__all__ = ["ObjectInfo", "ObjectStore", "check_key", "get_store", "open_store"]


def open_store(settings: Settings) -> ObjectStore:
    """The store that ``settings.storage_url`` names (``file://`` or ``s3://``)."""
    url = settings.storage_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        from loraflow.storage.local import LocalStore

        return LocalStore(Path(unquote(parts.path)))
    from loraflow.storage.s3 import S3Store, make_client

    return S3Store(
        make_client(settings),
        parts.netloc,
        parts.path,
        threshold=settings.multipart_threshold,
    )


@lru_cache(maxsize=1)
def get_store() -> ObjectStore:
    """The process-wide store built from ``get_settings()``."""
    return open_store(get_settings())


on_reset(get_store.cache_clear)
