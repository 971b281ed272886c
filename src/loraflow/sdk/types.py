"""Response types of the SDK, with the field names of LLM Engine's client.

The HTTP service returns the same models, so the published ``scale-llm-engine`` client parses
them unchanged. Fields beyond the client's are optional extras it ignores.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class UploadFileResponse(BaseModel):
    id: str


class GetFileResponse(BaseModel):
    id: str
    filename: str
    size: int
    sha256: str | None = None
    rows: int | None = None
    created_at: datetime | None = None


class ListFilesResponse(BaseModel):
    files: list[GetFileResponse]


class GetFileContentResponse(BaseModel):
    id: str
    content: str


class DeleteFileResponse(BaseModel):
    deleted: bool
