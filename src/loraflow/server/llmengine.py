"""LLM Engine's REST routes, as the published ``scale-llm-engine`` client calls them.

Routes that touch storage, Prefect or MLflow are plain functions (FastAPI runs them in its
thread pool); completions go through the engine's scheduler, batched with other requests.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Path, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from loraflow import completion
from loraflow.batch import JOB_IDS as BATCH_IDS
from loraflow.errors import InvalidRequestError
from loraflow.files import FILE_ID
from loraflow.fine_tuning import JOB_IDS as FINE_TUNE_IDS
from loraflow.sdk import Completion, FineTune, Model
from loraflow.sdk import File as Files
from loraflow.server.errors import NOT_FOUND, message_of, status_of
from loraflow.types import (
    JSON_INTEGER,
    CompletionStreamResponse,
    ModelReference,
    Seed,
    StreamError,
    StreamErrorContent,
)

# ids as the OpenAPI schema shows them; a malformed one is a 400 naming the field
FileId = Annotated[str, Path(pattern=FILE_ID.pattern, description="file-… id")]
FineTuneId = Annotated[str, Path(pattern=FINE_TUNE_IDS.pattern.pattern, description="ft-… id")]
BatchId = Annotated[str, Path(pattern=BATCH_IDS.pattern.pattern, description="batch-… id")]
ModelName = Annotated[ModelReference, Path()]

router = APIRouter()
log = logging.getLogger("loraflow.server")


# ---- files -------------------------------------------------------------------------------


@router.post("/v1/files")
def upload_file(file: UploadFile = File(...)) -> Any:  # noqa: B008
    return Files.upload(file.file, filename=file.filename or "upload")


@router.get("/v1/files")
def list_files() -> Any:
    return Files.list()


@router.get("/v1/files/{file_id}", responses=NOT_FOUND)
def get_file(file_id: FileId) -> Any:
    return Files.get(file_id)


@router.get("/v1/files/{file_id}/content", responses=NOT_FOUND)
def file_content(file_id: FileId) -> Any:
    return Files.download(file_id)


@router.delete("/v1/files/{file_id}", responses=NOT_FOUND)
def delete_file(file_id: FileId) -> Any:
    return Files.delete(file_id)


# ---- fine-tunes --------------------------------------------------------------------------


# Request bodies are strict: JSON's types as the schema says (no true for a number, no
# "1" for a bool), so what the schema refuses the server refuses.
STRICT = ConfigDict(strict=True)
STRICT_OPEN = ConfigDict(strict=True, extra="allow")


class CreateFineTuneRequest(BaseModel):
    model_config = STRICT
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None  # the client sends null when unset
    wandb_config: dict[str, Any] | None = None
    suffix: str | None = None


@router.post("/v1/llm/fine-tunes", responses=NOT_FOUND)
def create_fine_tune(body: CreateFineTuneRequest) -> Any:
    _check_remote_base_model(body.model)
    return FineTune.create(
        body.model,
        body.training_file,
        body.validation_file,
        body.hyperparameters or {},
        body.wandb_config,
        body.suffix,
    )


def _check_remote_base_model(model: str) -> None:
    """Over HTTP a base model is one of the zoo's, or one that ``remote_base_models`` allows:
    a client must not make the server read its own paths or fetch any hub id."""
    from loraflow.models import load_zoo
    from loraflow.settings import get_settings

    allowed = [*load_zoo(), *get_settings().remote_base_models]
    if model not in allowed:
        raise InvalidRequestError(
            f"model: over HTTP, name one of {', '.join(sorted(allowed))} (the server's "
            "remote_base_models setting allows more); local paths and hub ids are for the "
            "Python SDK on the server's machine"
        )


@router.get("/v1/llm/fine-tunes")
def list_fine_tunes() -> Any:
    return FineTune.list()


@router.get("/v1/llm/fine-tunes/{job_id}", responses=NOT_FOUND)
def get_fine_tune(job_id: FineTuneId) -> Any:
    return FineTune.get(job_id)


@router.put("/v1/llm/fine-tunes/{job_id}/cancel", responses=NOT_FOUND)
def cancel_fine_tune(job_id: FineTuneId) -> Any:
    return FineTune.cancel(job_id)


@router.get("/v1/llm/fine-tunes/{job_id}/events", responses=NOT_FOUND)
def fine_tune_events(job_id: FineTuneId) -> Any:
    return FineTune.get_events(job_id)


# ---- model endpoints ---------------------------------------------------------------------


class CreateEndpointRequest(BaseModel):
    model_config = STRICT_OPEN
    name: ModelReference
    model_name: ModelReference


@router.post("/v1/llm/model-endpoints", responses=NOT_FOUND)
def create_endpoint(body: CreateEndpointRequest) -> Any:
    """Every registered model is served already: an endpoint is its name, nothing to build."""
    served = Model.get(body.model_name)
    if body.name != served.name:
        raise InvalidRequestError(
            f"name: loraflow serves each model under its own name; use name={served.name!r} "
            f"(or call completions with model_endpoint_name={served.name!r})"
        )
    return {"endpoint_creation_task_id": f"served-{served.name}"}


@router.put("/v1/llm/model-endpoints/{name}", responses=NOT_FOUND)
def update_endpoint(name: ModelName) -> Any:
    Model.get(name)
    raise InvalidRequestError(
        "loraflow's engine serves every model in process; there are no endpoint settings to "
        "update (hardware, workers and framework options do not apply)"
    )


@router.get("/v1/llm/model-endpoints")
def list_endpoints() -> Any:
    return Model.list()


class DownloadRequest(BaseModel):
    model_config = STRICT
    model_name: ModelReference
    download_format: Literal["hugging_face"] = "hugging_face"


@router.post("/v1/llm/model-endpoints/download", responses=NOT_FOUND)
def download_model(body: DownloadRequest) -> Any:
    return Model.download(body.model_name, body.download_format)


@router.get("/v1/llm/model-endpoints/{name}", responses=NOT_FOUND)
def get_endpoint(name: ModelName) -> Any:
    return Model.get(name)


@router.delete("/v1/llm/model-endpoints/{name}", responses=NOT_FOUND)
def delete_endpoint(name: ModelName) -> Any:
    return Model.delete(name)


# ---- completions -------------------------------------------------------------------------


class CompletionRequest(BaseModel):
    """LLM Engine's CompletionSyncV1Request / CompletionStreamV1Request."""

    model_config = STRICT

    prompt: str
    max_new_tokens: Annotated[int, Field(ge=1), JSON_INTEGER]
    temperature: float = Field(ge=0, le=1)
    stop_sequences: list[str] | None = None
    return_token_log_probs: bool | None = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: Annotated[int, Field(ge=-1), JSON_INTEGER] | None = Field(
        None, description="-1 or null: off; else at least 1"
    )
    top_p: float | None = Field(None, gt=0, le=1)
    include_stop_str_in_output: bool | None = None
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    skip_special_tokens: bool | None = True
    seed: Seed | None = None  # loraflow's addition

    def params(self) -> completion.Params:
        unsupported = [
            name
            for name in (
                "presence_penalty",
                "frequency_penalty",
                "include_stop_str_in_output",
                "guided_json",
                "guided_regex",
                "guided_choice",
                "guided_grammar",
            )
            if getattr(self, name)
        ]
        if unsupported:
            raise InvalidRequestError(
                f"{unsupported[0]}: not supported by loraflow's engine; leave it unset"
            )
        if self.skip_special_tokens is False:
            raise InvalidRequestError("skip_special_tokens: only true is supported")
        return completion.params(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            stop_sequences=self.stop_sequences,
            return_token_log_probs=bool(self.return_token_log_probs),
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
        )


@router.post("/v1/llm/completions-sync", responses=NOT_FOUND)
def completions_sync(
    body: CompletionRequest, model_endpoint_name: Annotated[ModelReference, Query()]
) -> Any:
    return completion.complete(model_endpoint_name, body.prompt, None, body.params())


@router.post("/v1/llm/completions-stream", responses=NOT_FOUND)
async def completions_stream(
    body: CompletionRequest, model_endpoint_name: Annotated[ModelReference, Query()]
) -> Any:
    params = body.params()
    # resolving the model and checking the prompt happen before the stream starts, so
    # their errors are plain 4xx responses
    call = await run_in_threadpool(
        completion.Call, model_endpoint_name, [(body.prompt, None)], params
    )
    return EventSourceResponse(_sse(completion.achunks(call)), ping=15)


async def _sse(chunks: Any) -> Any:
    request_id = None
    try:
        async for chunk in chunks:
            request_id = chunk.request_id
            yield {"data": chunk.model_dump_json(exclude_none=False)}
    except Exception as exc:  # after the stream started: an error chunk, as LLM Engine does
        log.error("completion stream failed: %s", exc, exc_info=exc)
        error = CompletionStreamResponse(
            request_id=request_id or str(uuid.uuid4()),
            output=None,
            error=StreamError(
                status_code=status_of(exc),
                content=StreamErrorContent(
                    error=message_of(exc),
                    timestamp=datetime.now(UTC).isoformat(),
                ),
            ),
        )
        yield {"data": error.model_dump_json()}


# ---- batch completions -------------------------------------------------------------------


class BatchModelConfig(BaseModel):
    model_config = STRICT_OPEN
    model: ModelReference
    seed: Seed | None = None


class BatchRequest(BaseModel):
    """LLM Engine's batch request; prompts come from a file (``input_data_path``) only."""

    model_config = STRICT_OPEN
    input_data_path: str = Field(min_length=1, description="the prompts file: file-…, s3://…")
    output_data_path: str | None = None
    model_config_: BatchModelConfig = Field(alias="model_config")
    content: None = Field(None, description="not supported: send input_data_path")

    @field_validator("content", mode="before")
    @classmethod
    def _from_a_file(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "inline prompts are not supported; write them to a CSV/JSONL file and send "
                "input_data_path"
            )
        return value


def _start_batch(body: BatchRequest) -> str:
    return Completion.batch_create(
        body.model_config_.model,
        body.input_data_path,
        body.output_data_path,
        seed=body.model_config_.seed,
    ).job_id


@router.post("/v1/llm/batch-completions", responses=NOT_FOUND)
def batch_v1(body: BatchRequest) -> Any:
    return {"job_id": _start_batch(body)}


def _job(job_id: str) -> dict[str, Any]:
    job = Completion.get_batch_completion(job_id).job
    created = datetime.fromisoformat(job.created_at) if job.created_at else datetime.now(UTC)
    return {
        "job_id": job.job_id,
        "input_data_path": job.input_data_path,
        "output_data_path": job.output_data_path,
        "model_config": {"model": job.model},
        "priority": None,
        "status": job.status,
        "created_at": job.created_at,
        # loraflow's jobs do not expire; the client requires the field, so: LLM Engine's
        # default max_runtime_sec (a day) after creation
        "expires_at": (created + timedelta(days=1)).isoformat(),
        "completed_at": job.completed_at,
        "metadata": {
            k: str(v)
            for k, v in (
                ("num_inputs", job.num_inputs),
                ("num_completion_tokens", job.num_completion_tokens),
            )
            if v is not None
        },
    }


@router.post("/v2/batch-completions", responses=NOT_FOUND)
def batch_v2(body: BatchRequest) -> Any:
    return _job(_start_batch(body))


@router.get("/v2/batch-completions/{job_id}", responses=NOT_FOUND)
def get_batch(job_id: BatchId) -> Any:
    return {"job": _job(job_id)}


@router.post("/v2/batch-completions/{job_id}/actions/cancel", responses=NOT_FOUND)
def cancel_batch(job_id: BatchId) -> Any:
    return Completion.cancel_batch_completion(job_id)
