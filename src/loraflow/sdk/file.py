"""``File``: upload, inspect, download and delete datasets, as LLM Engine's client does."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from loraflow.files import FileRecord, FileRepository
from loraflow.sdk.types import (
    DeleteFileResponse,
    GetFileContentResponse,
    GetFileResponse,
    ListFilesResponse,
    UploadFileResponse,
)


def _repo() -> FileRepository:
    return FileRepository.from_settings()


def _to_response(record: FileRecord) -> GetFileResponse:
    return GetFileResponse(
        id=record.id,
        filename=record.filename,
        size=record.size,
        sha256=record.sha256,
        rows=record.rows,
        created_at=record.created_at,
    )


class File:
    """Datasets in loraflow's object store. Every method is a classmethod, as in LLM Engine."""

    @classmethod
    def upload(
        cls, file: IO[bytes] | IO[str] | str | Path, filename: str | None = None
    ) -> UploadFileResponse:
        """Validate and store a CSV/JSONL dataset (an open file or a path) as ``filename``.

        Raises ``DataValidationError`` (with ``.report`` listing every bad row) and stores
        nothing when the data is invalid.
        """
        return UploadFileResponse(id=_repo().upload(file, filename).id)

    @classmethod
    def get(cls, file_id: str) -> GetFileResponse:
        """Name, size, sha256 and row count of a stored file. Raises NotFoundError."""
        return _to_response(_repo().get(file_id))

    @classmethod
    def list(cls) -> ListFilesResponse:
        """Every stored file, oldest first."""
        return ListFilesResponse(files=[_to_response(r) for r in _repo().list()])

    @classmethod
    def download(cls, file_id: str) -> GetFileContentResponse:
        """The stored file's text."""
        content = _repo().read_bytes(file_id).decode("utf-8")
        return GetFileContentResponse(id=file_id, content=content)

    @classmethod
    def delete(cls, file_id: str) -> DeleteFileResponse:
        """Delete a stored file. Raises NotFoundError if there is none."""
        return DeleteFileResponse(deleted=_repo().delete(file_id))
