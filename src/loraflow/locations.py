"""Where data lives outside loraflow's own store: file ids, ``s3://`` URLs, local paths, and
prefixes (a URL or directory ending in ``/``) whose newest data file is meant.

Batch jobs read their prompts and write their results through here; the retrain pipeline
finds its dataset here. Errors name the ``field`` the location came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loraflow.data.sources import BUILTIN, resolve_source
from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.settings import get_settings

DATA_SUFFIXES = (".csv", ".jsonl")


def read(location: str, field: str) -> tuple[bytes, str]:
    """The bytes and file name at a file id, ``builtin:`` name, ``s3://`` URL or local path."""
    from loraflow.files import FileRepository

    if not location:
        raise InvalidRequestError(f"{field}: name a file id, an s3:// URL or a path")
    if location.startswith("file-"):
        files = FileRepository.from_settings()
        return files.read_bytes(location), files.get(location).filename
    if location.startswith(BUILTIN):
        path = resolve_source(location)
        return path.read_bytes(), path.name
    if location.startswith("s3://"):
        bucket, key = bucket_key(location)
        try:
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore's errors carry the reason
            raise NotFoundError(f"{field}: cannot read {location}: {exc}") from None
        return body, key.rsplit("/", 1)[-1]
    path = _local(location)
    if not path.is_file():
        raise NotFoundError(f"{field}: no file at {location}")
    return path.read_bytes(), path.name


def write(location: str, data: bytes) -> str:
    """Write ``data`` whole to an ``s3://`` URL or a local path (never a partial file)."""
    if location.startswith("s3://"):
        bucket, key = bucket_key(location)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return location
    path = _local(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return str(path)


def _local(location: str) -> Path:
    """A local path, or a ``file://`` URL (as the local store names its objects)."""
    if location.startswith("file://"):
        return Path(urlsplit(location).path)
    return Path(location).expanduser()


def newest(location: str, field: str) -> str:
    """``location`` itself, or for a prefix (``s3://bucket/dir/``, a directory) the location of
    its most recently modified ``.csv``/``.jsonl``; NotFoundError when it holds none."""
    if location.startswith("s3://") and location.endswith("/"):
        parts = urlsplit(location)
        pages = s3_client().get_paginator("list_objects_v2")
        found: list[Any] = []
        try:
            for page in pages.paginate(Bucket=parts.netloc, Prefix=parts.path.lstrip("/")):
                found += [o for o in page.get("Contents", []) if o["Key"].endswith(DATA_SUFFIXES)]
        except Exception as exc:
            raise NotFoundError(f"{field}: cannot list {location}: {exc}") from None
        if found:
            latest = max(found, key=lambda o: (o["LastModified"], o["Key"]))
            return f"s3://{parts.netloc}/{latest['Key']}"
    elif Path(location).expanduser().is_dir():
        files = [p for p in Path(location).expanduser().rglob("*") if p.suffix in DATA_SUFFIXES]
        if files:
            return str(max(files, key=lambda p: (p.stat().st_mtime_ns, str(p))))
    else:
        return location
    raise NotFoundError(
        f"{field}: no .csv or .jsonl file under {location}; put the dataset there first"
    )


def bucket_key(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.netloc or not parts.path.strip("/"):
        raise InvalidRequestError(f"{url}: an S3 location is s3://bucket/key")
    return parts.netloc, parts.path.lstrip("/")


def s3_client() -> Any:
    """An S3 client with loraflow's endpoint, region and credential settings."""
    from loraflow.storage.s3 import make_client

    return make_client(get_settings())
