"""Object storage: one interface (``ObjectStore``), a local directory and any S3 API behind it."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from loraflow.settings import Settings, get_settings, on_reset
from loraflow.storage.base import ObjectInfo, ObjectStore, check_key

__all__ = ["ObjectInfo", "ObjectStore", "check_key", "get_store", "open_store"]


def _local(settings: Settings, location: SplitResult) -> ObjectStore:
    from loraflow.storage.local import LocalStore

    return LocalStore(Path(unquote(location.path)))


def _s3(settings: Settings, location: SplitResult) -> ObjectStore:
    from loraflow.storage.s3 import S3Store, make_client

    return S3Store(
        make_client(settings),
        location.netloc,
        location.path,
        threshold=settings.multipart_threshold,
        retry_window=settings.s3_retry_window,
    )


# The storage backends by URI scheme: adding one is a module with an ObjectStore and a line
# here (and its scheme in settings.STORAGE_SCHEMES, which checks storage_uri on load).
STORES: dict[str, Callable[[Settings, SplitResult], ObjectStore]] = {"file": _local, "s3": _s3}


def open_store(settings: Settings) -> ObjectStore:
    """The store that ``settings.storage_url`` names (``file://`` or ``s3://``)."""
    location = urlsplit(settings.storage_url)
    return STORES[location.scheme](settings, location)


@lru_cache(maxsize=1)
def get_store() -> ObjectStore:
    """The process-wide store built from ``get_settings()``."""
    return open_store(get_settings())


on_reset(get_store.cache_clear)
