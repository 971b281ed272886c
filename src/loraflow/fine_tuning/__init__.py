"""Fine-tune jobs: request checks, names and ids, and the statuses LLM Engine's client knows.

A job is one Prefect flow run of the ``fine-tune`` deployment, named by the job id; Prefect is
the source of truth for its state, and the run's log is its event stream.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from loraflow.errors import InvalidRequestError
from loraflow.files import FileRecord, FileRepository
from loraflow.jobs import JobIds
from loraflow.models.zoo import ModelSpec, resolve_model
from loraflow.training.hyperparameters import Hyperparameters, parse_hyperparameters

JOB_IDS = JobIds("ft", "fine-tune")
SUFFIX = re.compile(r"^[A-Za-z0-9-]{1,28}$")
TAG = "loraflow-fine-tune"
FLOW_NAME = "fine-tune"
ENTRYPOINT = "flows.fine_tune:fine_tune"  # the flow, for resuming a run no deployment started


class FineTuneRequest(BaseModel):
    """A checked fine-tune request, as the flow receives it."""

    model: str = Field("smollm2-135m-instruct", description="Base model: zoo name, hub id or path.")
    training_file: str = Field(
        min_length=1, description="File id of the training data (file-...); required."
    )
    validation_file: str | None = Field(None, description="File id of validation data, if any.")
    hyperparameters: Hyperparameters = Field(
        Hyperparameters(),
        description="Learning rate, epochs, batch size, LoRA settings, ...; each field says "
        "its default.",
    )
    suffix: str | None = Field(None, description="Up to 28 letters, digits or dashes.")
    fine_tuned_model: str | None = Field(None, description="Output model name; set by create.")


class CheckedRequest(BaseModel):
    """What checking a request resolved: the base model, the files and the hyperparameters."""

    request: FineTuneRequest
    spec: ModelSpec
    training: FileRecord
    validation: FileRecord | None
    hyperparameters: Hyperparameters


def model_name(base: str, suffix: str | None, now: datetime | None = None) -> str:
    """``{base}.{suffix}.{YYMMDD-HHMMSS}`` (UTC), limited to ``[A-Za-z0-9._-]``, 62 chars."""
    stamp = (now or datetime.now(UTC)).strftime("%y%m%d-%H%M%S")
    name = ".".join(p for p in (base.split("/")[-1], suffix, stamp) if p)
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("-_.")
    return name[:62].rstrip("-_.")


def check_request(request: FineTuneRequest, files: FileRepository | None = None) -> CheckedRequest:
    """Check everything knowable before training: model, files, hyperparameters, suffix.

    Raises InvalidRequestError or NotFoundError naming the field; changes nothing.
    """
    if request.suffix is not None and not SUFFIX.match(request.suffix):
        raise InvalidRequestError(
            "User-provided suffix is invalid, must only contain alphanumeric characters and "
            f"dashes and be at most 28 characters (got {request.suffix!r})"
        )
    spec = resolve_model(request.model)
    hyperparameters = parse_hyperparameters(request.hyperparameters)
    files = files or FileRepository.from_settings()
    if not request.training_file:
        raise InvalidRequestError("training_file is required: upload data with File.upload first")
    training = _file(files, request.training_file, "training")
    validation = (
        _file(files, request.validation_file, "validation") if request.validation_file else None
    )
    return CheckedRequest(
        request=request,
        spec=spec,
        training=training,
        validation=validation,
        hyperparameters=hyperparameters,
    )


def _file(files: FileRepository, file_id: str, role: str) -> FileRecord:
    from loraflow.errors import NotFoundError

    try:
        record = files.get(file_id)
    except NotFoundError:
        raise NotFoundError(f"{role.capitalize()} file does not exist: {file_id}") from None
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{role}_file: {exc}") from None
    if not record.validation.valid:
        raise InvalidRequestError(f"{role} file {file_id} did not pass validation")
    return record
