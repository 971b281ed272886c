"""Stored datasets: validated once on the way in, kept with their rows and metadata.

Layout in the store, per file: ``files/<id>/content`` (the bytes as uploaded),
``files/<id>/rows.parquet`` (the validated, normalised rows), ``files/<id>/report.json`` (every
problem found) and ``files/<id>/meta.json`` (written last, so a file is listed only once it is
complete). Whatever reads a stored dataset (training, scoring, batches) reads ``rows``: a
dataset is validated once, when it is stored.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import string
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from loraflow.data.report import ValidationSummary
from loraflow.errors import InvalidRequestError, NotFoundError, first_problem
from loraflow.settings import Settings, ValidationConfig, get_settings
from loraflow.storage import ObjectStore, get_store
from loraflow.types import DataSeed

if TYPE_CHECKING:
    import polars as pl

    from loraflow.data import Dataset, ValidationReport

log = logging.getLogger(__name__)
FILE_ID = re.compile(r"^file-[A-Za-z0-9]{8,64}$")
_ALPHABET = string.ascii_letters + string.digits
_ID_CHARS = 20

FileSource = Path | str | IO[bytes] | IO[str]


_PARTS = ("content", "rows.parquet", "report.json")
SWEEP_AFTER = timedelta(hours=1)


class IngestConfig(BaseModel):
    """What to ingest and how."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "builtin:customer_support.csv",
        description="Local CSV/JSONL path, or builtin:NAME for a bundled dataset (as the default).",
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of rows split off as the validation file; 0 keeps all."
    )
    seed: DataSeed = Field(42, description="Seed of the train/validation split.")
    limits: ValidationConfig | None = Field(
        None, description="Validation limits; unset uses the stack settings."
    )


class IngestResult(BaseModel):
    """The stored files."""

    training_file: str
    validation_file: str | None
    training_rows: int
    validation_rows: int
    sha256: str
    validation: ValidationSummary | None = None  # of the whole dataset, before the split


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


@dataclass
class Ingested:
    """What ``FileRepository.ingest`` stored, and the report on the whole dataset."""

    report: ValidationReport
    training: FileRecord
    validation: FileRecord | None


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
            return self.store_dataset(dataset, path)

    def store_dataset(self, dataset: Dataset, content: Path | bytes) -> FileRecord:
        """Store a validated dataset: its ``content`` (the file's bytes), rows and report,
        then its metadata last. Nothing is left behind when a write fails."""
        import io

        report = dataset.report
        file_id = new_file_id()
        rows = io.BytesIO()
        dataset.frame.write_parquet(rows)
        try:
            info = self.store.put(_key(file_id, "content"), content)
            self.store.put(_key(file_id, "rows.parquet"), rows.getvalue())
            issues = _json({"summary": report.summary().model_dump(), "issues": report.issues})
            self.store.put(_key(file_id, "report.json"), issues)
            record = FileRecord(
                id=file_id,
                filename=report.source,
                size=info.size,
                sha256=info.sha256 or "",
                rows=report.rows,
                format=report.format or "csv",
                created_at=datetime.now(UTC),
                validation=report.summary(),
            )
            self.store.put(_key(file_id, "meta.json"), record.model_dump_json(indent=2).encode())
        except BaseException:
            with contextlib.suppress(Exception):  # the store's own error is the one to tell
                self._remove(file_id)
            raise
        return record

    def ingest(
        self, source: FileSource, validation_fraction: float, seed: int, filename: str | None = None
    ) -> Ingested:
        """Validate ``source`` once, split off a seeded validation part (unless the fraction
        is 0) and store the parts; DataValidationError, and nothing stored, when it is bad."""
        from loraflow.data.split import encode_rows, split_frame
        from loraflow.data.validate import part_of, validate

        with local_file(source, self.work_dir) as (path, default_name):
            name = Path(filename or default_name).name or "dataset"
            whole = validate(path, name=name, config=self.validation).raise_for_errors()
            if validation_fraction == 0:
                return Ingested(whole.report, self.store_dataset(whole, path), None)
        stem = name.rsplit(".", 1)[0]
        stored = []
        for part, role in zip(
            split_frame(whole.frame, validation_fraction, seed),
            ("train", "validation"),
            strict=True,
        ):
            content, suffix = encode_rows(part)
            dataset = part_of(whole, part, f"{stem}.{role}{suffix}", self.validation)
            stored.append(self.store_dataset(dataset, content))
        return Ingested(whole.report, stored[0], stored[1])

    def rows(self, file_id: str) -> pl.DataFrame:
        """The validated rows of a stored file (prompt, response and, for chats, messages).

        Files stored before rows were kept are validated once more and get them now.
        """
        import polars as pl

        self.get(file_id)
        try:
            return pl.read_parquet(self.store.get_bytes(_key(file_id, "rows.parquet")))
        except NotFoundError:
            return self._backfill_rows(file_id)

    def _backfill_rows(self, file_id: str) -> pl.DataFrame:
        import io

        from loraflow.data import validate

        record = self.get(file_id)
        data = self.store.get_bytes(_key(file_id, "content"))
        frame = validate(data, name=record.filename, config=self.validation).frame
        rows = io.BytesIO()
        frame.write_parquet(rows)
        self.store.put(_key(file_id, "rows.parquet"), rows.getvalue())
        return frame

    def get(self, file_id: str) -> FileRecord:
        """The metadata of ``file_id``; NotFoundError if there is no such file."""
        check_file_id(file_id)
        try:
            raw = self.store.get_bytes(_key(file_id, "meta.json"))
        except NotFoundError:
            raise NotFoundError(
                f"The specified file could not be found: {file_id} "
                "(`loraflow files list` shows the stored files)"
            ) from None
        return FileRecord.model_validate_json(raw)

    def list(self) -> list[FileRecord]:
        """Every stored file, oldest first. A file whose metadata cannot be read is left out
        with a warning naming it; the others still list."""
        from pydantic import ValidationError

        records = []
        for info in self.store.list("files/"):
            if not info.key.endswith("/meta.json"):
                continue
            try:
                records.append(FileRecord.model_validate_json(self.store.get_bytes(info.key)))
            except NotFoundError:
                continue  # deleted while listing
            except ValidationError as exc:
                why = first_problem(exc)
                log.warning("skipped %s: its metadata is unreadable (%s)", info.key, why)
        return sorted(records, key=lambda r: r.created_at)

    def read_bytes(self, file_id: str) -> bytes:
        """The stored bytes of ``file_id``."""
        self.get(file_id)
        return self.store.get_bytes(_key(file_id, "content"))

    def download(self, file_id: str, dest: Path) -> Path:
        """Copy the file's content to ``dest`` and return it."""
        self.get(file_id)
        return self.store.download(_key(file_id, "content"), dest)

    def url(self, file_id: str, expires_in: int = 3600) -> str:
        """A URL fetching the file's content (presigned on S3)."""
        self.get(file_id)
        return self.store.url(_key(file_id, "content"), expires_in)

    def sweep(self, older_than: timedelta = SWEEP_AFTER) -> Sequence[str]:
        """Remove what failed uploads left behind, once older than ``older_than`` (younger
        ones may be uploading now): file folders with no metadata (never listed, never
        readable) and unfinished multipart uploads. Returns the keys removed."""
        now = datetime.now(UTC)
        folders: dict[str, Any] = {}
        for info in self.store.list("files/"):
            folders.setdefault(info.key.split("/")[1], []).append(info)
        removed = []
        for infos in folders.values():
            if any(i.key.endswith("/meta.json") for i in infos):
                continue
            if any(i.modified is None or now - i.modified < older_than for i in infos):
                continue
            for info in infos:
                self.store.delete(info.key)
                removed.append(info.key)
        return [*removed, *self.store.abort_unfinished(older_than)]

    def delete(self, file_id: str) -> bool:
        """Delete the file; True if it existed. The metadata goes first, so it unlists at once."""
        self.get(file_id)
        self.store.delete(_key(file_id, "meta.json"))
        self._remove(file_id)
        return True

    def _remove(self, file_id: str) -> None:
        for part in _PARTS:
            self.store.delete(_key(file_id, part))


def _key(file_id: str, part: str) -> str:
    return f"files/{check_file_id(file_id)}/{part}"


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value, indent=2, default=str).encode()


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


def housekeeping(settings: Settings | None = None) -> Sequence[str]:
    """At each start of the service or the stack: sweep what failed uploads left, and ask
    the store to clean up unfinished uploads itself. Best effort: storage being down here is
    logged, not fatal. Returns the keys removed."""
    from loraflow.errors import LoraflowError

    repository = FileRepository.from_settings(settings)
    try:
        repository.store.ensure_cleanup_rule()
        removed = repository.sweep()
    except LoraflowError as exc:
        log.warning("storage housekeeping skipped: %s", exc)
        return []
    if removed:
        log.info("removed %d leftover object(s) of failed uploads", len(removed))
    return removed
