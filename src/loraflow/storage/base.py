"""The object-store interface loraflow writes datasets, checkpoints and adapters through."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from loraflow.errors import InvalidRequestError, NotFoundError

CHUNK = 1 << 20
_KEY = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")
PRESIGN_SECONDS = 3600

Source = Path | BinaryIO | bytes


class ObjectInfo(BaseModel):
    """What the store knows of one object."""

    key: str
    size: int
    sha256: str | None = None
    modified: datetime | None = None


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise InvalidRequestError."""
    if not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise InvalidRequestError(
            f"invalid object key {key!r}: use letters, digits, '._=-' and '/' between parts"
        )
    return key


class HashingReader:
    """A forward-only reader that hashes and counts what passes through it.

    It deliberately has no ``seek``: boto3's transfer manager then reads it in order, so the
    digest is of exactly the bytes sent.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if isinstance(data, str):  # a text-mode file object
            data = data.encode("utf-8")
        self._hash.update(data)
        self.size += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class ObjectStore(ABC):
    """A flat key space of immutable blobs. Writes are all-or-nothing."""

    uri: str

    @abstractmethod
    def put(self, key: str, source: Source) -> ObjectInfo:
        """Stream ``source`` to ``key``; return its size and sha256. Leaves nothing on failure."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open ``key`` for streaming reads. Raises NotFoundError."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed. Idempotent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is present."""

    @abstractmethod
    def url(self, key: str, expires_in: int = PRESIGN_SECONDS) -> str:
        """A URL that fetches ``key``: presigned on S3, ``file://`` locally."""

    def abort_unfinished(self, older_than: timedelta) -> Sequence[str]:
        """Abort uploads left unfinished (S3 multipart parts) for longer than ``older_than``;
        the keys they were for. A store that writes whole objects has none."""
        return []

    def ensure_cleanup_rule(self) -> bool:
        """Ask the store itself to drop unfinished uploads (an S3 lifecycle rule) where it
        allows it; True when the rule is in place or none is needed."""
        return True

    def missing(self, key: str) -> NotFoundError:
        """The error for ``key`` not being in this store."""
        return NotFoundError(f"no object {key!r} in {self.uri}")

    def get_bytes(self, key: str) -> bytes:
        """Read all of ``key`` into memory."""
        with self.open(key) as stream:
            return stream.read()

    def download(self, key: str, dest: Path) -> Path:
        """Copy ``key`` to the local file ``dest`` (written atomically) and return it."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.partial")
        try:
            with self.open(key) as stream, partial.open("wb") as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
            partial.replace(dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest


def as_stream(source: Source) -> tuple[BinaryIO, bool]:
    """Open ``source`` as a binary stream; the flag says whether the caller must close it."""
    import io

    if isinstance(source, Path):
        return source.open("rb"), True
    if isinstance(source, bytes):
        return io.BytesIO(source), True
    return source, False
