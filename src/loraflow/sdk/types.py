"""Response types of the SDK, with the field names of LLM Engine's client.

The HTTP service returns the same models, so the published ``scale-llm-engine`` client parses
them unchanged. Fields beyond the client's are optional extras it ignores.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

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


FineTuneStatus = Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"]


class CreateFineTuneResponse(BaseModel):
    id: str


class GetFineTuneResponse(BaseModel):
    id: str
    fine_tuned_model: str | None = None
    status: FineTuneStatus


class ListFineTunesResponse(BaseModel):
    jobs: list[GetFineTuneResponse]


class CancelFineTuneResponse(BaseModel):
    success: bool


class LLMFineTuneEvent(BaseModel):
    timestamp: float | None = None
    message: str
    level: str


class GetFineTuneEventsResponse(BaseModel):
    events: list[LLMFineTuneEvent]
