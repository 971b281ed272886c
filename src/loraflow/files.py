"""Stored datasets: validated on the way in, kept in the object store with their metadata.

Layout in the store: ``files/<id>/content`` (the bytes as uploaded) and ``files/<id>/meta.json``
(written last, so a file is listed only once it is complete).
"""

from __future__ import annotations

import re
import secrets
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from loraflow.data.report import ValidationSummary
from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.settings import Settings, ValidationConfig, get_settings
from loraflow.storage import ObjectStore, get_store

FILE_ID = re.compile(r"^file-[A-Za-z0-9]{8,64}$")
_ALPHABET = string.ascii_letters + string.digits
_ID_CHARS = 20

FileSource = Path | str | IO[bytes] | IO[str]


class FileRecord(BaseModel):
    """Metadata kept beside every stored file."""

    id: str
    filename: str
    size: int
    sha256: str
    rows: int
    format: str
    created_at: datetime
    validation: ValidationSummary


def new_file_id() -> str:
    """A fresh ``file-`` id with 119 bits of randomness."""
    return "file-" + "".join(secrets.choice(_ALPHABET) for _ in range(_ID_CHARS))


def check_file_id(file_id: str) -> str:
    """Return ``file_id`` if it is well formed, else raise InvalidRequestError."""
    if not isinstance(file_id, str) or not FILE_ID.match(file_id):
        raise InvalidRequestError(
            f"{file_id!r} is not a loraflow file id; ids look like 'file-' followed by "
            "letters and digits (see `loraflow files list`)"
        )
    return file_id


class FileRepository:
    """Upload, look up, read and delete datasets in one object store."""

    def __init__(self, store: ObjectStore, validation: ValidationConfig, work_dir: Path) -> None:
        self.store = store
        self.validation = validation
        self.work_dir = work_dir

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> FileRepository:
        settings = settings or get_settings()
        store = get_store() if settings is get_settings() else _store_for(settings)
        return cls(store, settings.validation, settings.home / "tmp")

    def upload(self, source: FileSource, filename: str | None = None) -> FileRecord:
        """Validate ``source`` and store it; raise DataValidationError and store nothing if bad.

        ``source`` is a path or an open file (binary or text). Not idempotent: every call
        stores a new file with a new id.
        """
        from loraflow.data import validate

        with local_file(source, self.work_dir) as (path, default_name):
            name = Path(filename or default_name).name or "dataset"
            dataset = validate(path, name=name, config=self.validation).raise_for_errors()
            file_id = new_file_id()
            info = self.store.put(_content_key(file_id), path)
            record = FileRecord(
                id=file_id,
                filename=name,
                size=info.size,
                sha256=info.sha256 or "",
                rows=dataset.report.rows,
                format=dataset.report.format or "csv",
                created_at=datetime.now(UTC),
                validation=dataset.report.summary(),
            )
            try:
                self.store.put(_meta_key(file_id), record.model_dump_json(indent=2).encode())
            except BaseException:
                self.store.delete(_content_key(file_id))
                raise
        return record

    def get(self, file_id: str) -> FileRecord:
        """The metadata of ``file_id``; NotFoundError if there is no such file."""
        check_file_id(file_id)
        try:
            raw = self.store.get_bytes(_meta_key(file_id))
        except NotFoundError:
            raise NotFoundError(
                f"The specified file could not be found: {file_id} "
                "(`loraflow files list` shows the stored files)"
            ) from None
        return FileRecord.model_validate_json(raw)

    def list(self) -> list[FileRecord]:
        """Every stored file, oldest first."""
        records = [
            FileRecord.model_validate_json(self.store.get_bytes(info.key))
            for info in self.store.list("files/")
            if info.key.endswith("/meta.json")
        ]
        return sorted(records, key=lambda r: r.created_at)

    def read_bytes(self, file_id: str) -> bytes:
        """The stored bytes of ``file_id``."""
        self.get(file_id)
        return self.store.get_bytes(_content_key(file_id))

    def download(self, file_id: str, dest: Path) -> Path:
        """Copy the file's content to ``dest`` and return it."""
        self.get(file_id)
        return self.store.download(_content_key(file_id), dest)

    def url(self, file_id: str, expires_in: int = 3600) -> str:
        """A URL fetching the file's content (presigned on S3)."""
        self.get(file_id)
        return self.store.url(_content_key(file_id), expires_in)

    def delete(self, file_id: str) -> bool:
        """Delete the file; True if it existed. The metadata goes first, so it unlists at once."""
        self.get(file_id)
        self.store.delete(_meta_key(file_id))
        self.store.delete(_content_key(file_id))
        return True


def _content_key(file_id: str) -> str:
    return f"files/{check_file_id(file_id)}/content"


def _meta_key(file_id: str) -> str:
    return f"files/{check_file_id(file_id)}/meta.json"


def _store_for(settings: Settings) -> ObjectStore:
    from loraflow.storage import open_store

    return open_store(settings)


@contextmanager
def local_file(source: FileSource, work_dir: Path) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, name)`` for ``source``: a path as is, an open file spooled to ``work_dir``.

    The spooled copy is deleted on exit. Text-mode files are encoded as UTF-8.
    """
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        if not path.is_file():
            raise NotFoundError(f"no such file: {path}")
        yield path, path.name
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    name = Path(str(getattr(source, "name", "") or "upload")).name
    with tempfile.NamedTemporaryFile(dir=work_dir, suffix=Path(name).suffix) as tmp:
        for chunk in iter(lambda: source.read(1 << 20), source.read(0)):
            tmp.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        tmp.flush()
        yield Path(tmp.name), name
