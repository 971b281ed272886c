"""The wire types: LLM Engine's request settings and response models, with its field names.

The core returns them, the SDK hands them out (``loraflow.sdk.types`` re-exports them) and the
HTTP service sends them, so the published ``scale-llm-engine`` client parses them unchanged.
Fields beyond the client's are optional extras it ignores. Only pydantic is imported here.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, computed_field

__all__ = [
    "JSON_INTEGER",
    "BatchCompletionsJob",
    "BatchResultLine",
    "BatchStatus",
    "CancelBatchCompletionResponse",
    "CancelFineTuneResponse",
    "CompletionOutput",
    "CompletionStreamOutput",
    "CompletionStreamResponse",
    "CompletionSyncResponse",
    "CreateBatchCompletionsResponse",
    "CreateFineTuneResponse",
    "DeleteFileResponse",
    "DeleteLLMEndpointResponse",
    "FineTuneProgress",
    "FineTuneStatus",
    "GenerateOutput",
    "GenerationStatistics",
    "GetBatchCompletionResponse",
    "GetFileContentResponse",
    "GetFileResponse",
    "GetFineTuneEventsResponse",
    "GetFineTuneResponse",
    "GetLLMEndpointResponse",
    "LLMFineTuneEvent",
    "Lineage",
    "ListFilesResponse",
    "ListFineTunesResponse",
    "ListLLMEndpointsResponse",
    "ModelDownloadResponse",
    "ModelReference",
    "ModelStatus",
    "RunStatus",
    "RunUsage",
    "SamplingOptions",
    "SamplingParams",
    "StreamError",
    "StreamErrorContent",
    "TokenOutput",
    "UploadFileResponse",
]


class _JsonInteger:
    """Annotation of an int taken as JSON Schema means it: 3 or 3.0, never "3" or true, even
    inside a strict model. It goes after the field's constraints, which the schema keeps:
    ``Annotated[int, Field(ge=1), JSON_INTEGER]``."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        schema = handler(source)
        schema["strict"] = False  # 3.0 is 3
        return core_schema.no_info_before_validator_function(_no_bool_or_str, schema)


def _no_bool_or_str(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise ValueError("must be a number without a fraction, not a string or a boolean")
    return value


JSON_INTEGER = _JsonInteger()
# A sampling seed: an integer every JSON client sends exactly (I-JSON's ±(2**53 - 1)), well
# inside what torch's generators take (loraflow adds the generation's index to it).
Seed = Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1), JSON_INTEGER]
# A training or split seed: accelerate's set_seed seeds numpy, which takes 0 to 2**32 - 1.
DataSeed = Annotated[int, Field(ge=0, le=2**32 - 1)]

# A model's name (a base model of the zoo, or a fine-tune) ...
MODEL_NAME = r"[A-Za-z0-9._-]{1,128}"
# ... and what names one: NAME, NAME@ALIAS or NAME/VERSION, MLflow's models:/ prefix allowed
MODEL_REFERENCE = rf"^(models:/)?{MODEL_NAME}(@{MODEL_NAME}|/[0-9]{{1,9}})?$"
_REFERENCE = re.compile(MODEL_REFERENCE)


def _model_reference(value: str) -> str:
    if not _REFERENCE.match(value):
        shown = value if len(value) <= 60 else value[:60] + "…"
        raise ValueError(
            f"{shown!r} is not a model name; use NAME, NAME@ALIAS or NAME/VERSION, where names "
            "use letters, digits and '._-' only, at most 128 of them"
        )
    return value


# A model as a request names it; the OpenAPI schema shows the pattern
ModelReference = Annotated[
    str,
    AfterValidator(_model_reference),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": MODEL_REFERENCE,
            "description": "NAME, NAME@ALIAS or NAME/VERSION",
        }
    ),
]


class SamplingOptions(TypedDict, total=False):
    """How a completion samples, beside its length and temperature (see SamplingParams)."""

    stop_sequences: list[str] | None  # text ends before the first of these
    return_token_log_probs: bool
    top_p: float | None  # nucleus sampling, in (0, 1]
    top_k: int | None  # top-k sampling; -1 or None: off
    seed: int | None  # makes sampling repeatable
    timeout: float | None  # seconds before CompletionTimeoutError


class SamplingParams(SamplingOptions, total=False):
    """Every sampling setting of a completion call, as LLM Engine names them: declared once,
    taken by ``Completion`` as keyword arguments and checked by ``loraflow.completion.Params``."""

    max_new_tokens: int | None  # new tokens, at most; None: the rest of the context window
    temperature: float  # 0 is greedy; at most 1


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
BatchStatus = Literal["queued", "running", "completed", "failed", "cancelled", "unknown"]


class CreateFineTuneResponse(BaseModel):
    id: str


class GetFineTuneResponse(BaseModel):
    id: str
    fine_tuned_model: str | None = None
    status: FineTuneStatus


class FineTuneProgress(BaseModel):
    """How far a fine-tune has come: its step of all, epoch, latest losses, an estimate of the
    time left, and where to watch it (Prefect's UI, MLflow). Not in LLM Engine's client."""

    id: str
    status: FineTuneStatus
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    eta_seconds: float | None = Field(None, description="at the pace of the steps so far")
    prefect_url: str | None = None
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    history: list[dict[str, float]] = Field(
        default_factory=list, description="every step's metrics line, in order"
    )


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


class TokenOutput(BaseModel):
    """One generated token: its text (what it adds to the output) and its log probability."""

    token: str
    log_prob: float


class CompletionOutput(BaseModel):
    text: str
    num_prompt_tokens: int | None = None
    num_completion_tokens: int
    tokens: list[TokenOutput] | None = None
    finish_reason: str | None = None  # stop | length; beyond LLM Engine's fields


class CompletionSyncResponse(BaseModel):
    request_id: str
    output: CompletionOutput


class CompletionStreamOutput(BaseModel):
    text: str
    finished: bool
    num_prompt_tokens: int | None = None
    num_completion_tokens: int | None = None
    token: TokenOutput | None = None
    finish_reason: str | None = None


class StreamErrorContent(BaseModel):
    error: str
    timestamp: str


class StreamError(BaseModel):
    status_code: int
    content: StreamErrorContent


class CompletionStreamResponse(BaseModel):
    request_id: str
    output: CompletionStreamOutput | None = None
    error: StreamError | None = None


class GenerationStatistics(BaseModel):
    input_tokens: list[int]
    output_tokens: list[int]


class GenerateOutput(BaseModel):
    """Every generation for one input of ``Completion.generate``, with token statistics."""

    generations: list[str]
    outputs: list[CompletionOutput]
    statistics: GenerationStatistics


class BatchResultLine(GenerateOutput):
    """One input's line of a batch job's results: its place, what was asked, what came."""

    index: int
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None


class RunUsage(BaseModel):
    """Token counts as OpenAI's and aiXplain's responses carry them."""

    prompt_tokens: int
    completion_tokens: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RunStatus(BaseModel):
    """How a completion started with ``Completion.submit`` stands (aiXplain's poll shape)."""

    model_config = ConfigDict(populate_by_name=True)

    completed: bool
    status: Literal["IN_PROGRESS", "SUCCESS", "FAILED"]
    data: str = ""
    usage: RunUsage | None = None
    run_time: float | None = Field(None, alias="runTime", description="seconds")
    error_message: str | None = None


ModelStatus = Literal[
    "READY", "UPDATE_PENDING", "UPDATE_IN_PROGRESS", "UPDATE_FAILED", "DELETE_IN_PROGRESS"
]


class Provenance(BaseModel):
    """What a fine-tune was made from: data, base model, settings, code and runs."""

    job_id: str
    training_file: str
    training_sha256: str
    validation_file: str | None = None
    validation_sha256: str | None = None
    base_model: str
    base_revision: str
    hyperparameters: dict[str, Any] = {}
    loraflow_version: str = ""
    code_commit: str = ""
    prefect_flow_run_id: str | None = None
    mlflow_run_id: str


class Lineage(Provenance):
    """A fine-tune's provenance, with what its registry version adds and links to the UIs."""

    dataset: str | None = None  # what a retrain read, before ingest split it
    dataset_sha256: str | None = None
    recipe: str | None = None  # the retrain's recipe fingerprint
    promotion: dict[str, str] = {}  # the promotion decisions recorded on the version
    links: dict[str, str] = {}  # Prefect and MLflow UI pages, while the stack runs


class GetLLMEndpointResponse(BaseModel):
    """A served model, with LLM Engine's endpoint fields plus loraflow's lineage."""

    id: str
    name: str
    model_name: str
    source: Literal["hugging_face"] = "hugging_face"
    status: ModelStatus = "READY"
    # LLM Engine's client accepts five frameworks only; this is the nearest to ours
    # (transformers + peft in process), and what production serving behind vLLM would say.
    inference_framework: Literal["text_generation_inference", "vllm"] = "text_generation_inference"
    inference_framework_tag: str | None = None
    num_shards: int = 1
    quantize: str | None = None
    chat_template_override: str | None = None
    # loraflow's own fields; LLM Engine's client ignores them
    base_model: str
    fine_tuned: bool
    created_at: datetime | None = None
    job_id: str | None = None
    registered_model: str | None = None
    version: int | None = None
    aliases: list[str] = []
    metrics: dict[str, float] = {}
    lineage: Lineage | None = None  # Model.get fills it


class ListLLMEndpointsResponse(BaseModel):
    model_endpoints: list[GetLLMEndpointResponse]


class DeleteLLMEndpointResponse(BaseModel):
    deleted: bool


class ModelDownloadResponse(BaseModel):
    urls: dict[str, str]


class CreateBatchCompletionsResponse(BaseModel):
    job_id: str


class BatchCompletionsJob(BaseModel):
    job_id: str
    model: str
    input_data_path: str
    output_data_path: str
    status: BatchStatus
    created_at: str
    completed_at: str | None = None
    num_inputs: int | None = None  # set once completed
    num_completion_tokens: int | None = None


class GetBatchCompletionResponse(BaseModel):
    job: BatchCompletionsJob


class CancelBatchCompletionResponse(BaseModel):
    success: bool
