"""A directory used as an object store: the embedded default, persistent across runs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from loraflow.storage.base import (
    CHUNK,
    HashingReader,
    ObjectInfo,
    ObjectStore,
    Source,
    as_stream,
    check_key,
)

_TMP = ".partial"


class LocalStore(ObjectStore):
    """Objects are files under ``root``; a write goes to a temp file then is renamed in place."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.uri = self.root.as_uri()
        (self.root / _TMP).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: Source) -> ObjectInfo:
        dest = self._path(key)
        tmp = self.root / _TMP / uuid.uuid4().hex
        stream, owned = as_stream(source)
        reader = HashingReader(stream)
        try:
            with tmp.open("wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
            if owned:
                stream.close()
        return ObjectInfo(key=key, size=reader.size, sha256=reader.sha256, modified=_now())

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise self.missing(key) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found = []
        for path in self.root.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(_TMP) or not path.is_file() or not key.startswith(prefix):
                continue
            stat = path.stat()
            found.append(
                ObjectInfo(
                    key=key,
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )
            )
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        for parent in path.parents:  # drop directories the delete emptied
            if parent == self.root or any(parent.iterdir()):
                break
            parent.rmdir()
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def url(self, key: str, expires_in: int = 3600) -> str:
        path = self._path(key)
        if not path.is_file():
            raise self.missing(key)
        return path.as_uri()


def _now() -> datetime:
    return datetime.now(UTC)
