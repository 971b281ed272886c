"""Batch completions: prompts from a file, generated in batches, results as JSONL in storage.

Inputs come from a file id (``file-…``), an ``s3://bucket/key`` URL or a local path, as CSV
(a ``prompt`` column, optionally ``messages`` holding a JSON list of turns) or JSONL (objects
with ``prompt`` or ``messages``). Results are one JSON line per input, in input order:
``{"index", "prompt" | "messages", "generations", "outputs", "statistics"}``. They are written
once, whole, at the end: a failed or cancelled job leaves no partial output.

The ``batch-complete`` flow splits the inputs into chunks (``chunks``) that Prefect tasks
generate on a Dask cluster (``chunk_lines``), then writes them (``finish``); ``run`` does the
same in one process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loraflow import locations
from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.jobs import JobIds
from loraflow.storage import get_store
from loraflow.types import Seed

JOB_IDS = JobIds("batch", "batch")
TAG = "loraflow-batch-completion"
FLOW_NAME = "batch-complete"
MAX_INPUTS = 100_000


class BatchCompleteConfig(BaseModel):
    """A batch completion job: which model, which prompts, where results go, how to sample."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("tiny-llama-test", description="Base model, fine-tune, NAME@ALIAS…")
    input_data_path: str = Field(
        "", description="Prompts: file-… id, s3://bucket/key, or a local CSV/JSONL path."
    )
    output_data_path: str | None = Field(
        None,
        description="Where the JSONL results go (s3://bucket/key or a local path); unset: "
        "batch-completions/JOB/results.jsonl in loraflow's store.",
    )
    max_new_tokens: int = Field(64, ge=1, description="New tokens per completion, at most.")
    temperature: float = Field(0.0, ge=0, le=1, description="0 is greedy.")
    stop_sequences: list[str] | None = Field(None, description="Text that ends a completion.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling.")
    top_k: int | None = Field(None, ge=-1, description="Top-k sampling; -1 or unset: off.")
    seed: Seed | None = Field(None, description="Makes sampling repeatable.")
    num_generations: int = Field(1, ge=1, le=64, description="Completions per prompt.")
    return_token_log_probs: bool = Field(False, description="Include per-token log probs.")
    batch_size: int = Field(32, ge=1, le=512, description="Prompts generated together.")
    chunk_size: int = Field(
        256,
        ge=1,
        le=MAX_INPUTS,
        description="Prompts per task on the cluster; a retried job skips the chunks it did.",
    )
    workers: int | None = Field(
        None, ge=1, le=256, description="Local cluster workers; default: settings batch.workers."
    )


class BatchResult(BaseModel):
    job_id: str
    output_data_path: str
    inputs: int
    completion_tokens: int


def load_inputs(location: str) -> list[str | list[dict[str, str]]]:
    """The inputs at ``location``: a stored file's validated rows (its prompts, or the turns
    before each chat's answer), else the prompts of a CSV/JSONL file read there."""
    if location.startswith("file-"):
        from loraflow.files import FileRepository

        frame = FileRepository.from_settings().rows(location)
        chats = frame["messages"] if "messages" in frame.columns else [None] * len(frame)
        return [
            json.loads(chat)[:-1] if chat else prompt
            for prompt, chat in zip(frame["prompt"], chats, strict=True)
        ]
    return parse_inputs(*locations.read(location, "input_data_path"))


def parse_inputs(data: bytes, name: str) -> list[str | list[dict[str, str]]]:
    """Prompts (strings) and chats (lists of turns) from CSV or JSONL, read by the dataset
    reader (``loraflow.data.readers``); the first problem, with its line, is the error."""
    import polars as pl

    from loraflow.chat import turns
    from loraflow.data.readers import PROMPTS, read_table
    from loraflow.data.report import ValidationReport

    report = ValidationReport(source=name)
    table = read_table(data, name, report, PROMPTS, max_chars=None)
    if table is None or report.errors:
        first = report.errors[0]
        where = f"{name} line {first['line']}" if first["line"] else name
        raise InvalidRequestError(f"{where}: {first['message']}")
    frame = table.frame
    chats = frame["messages"] if "messages" in frame.columns else [None] * len(frame)
    inputs: list[str | list[dict[str, str]]] = []
    for i, (prompt, chat) in enumerate(zip(frame["prompt"], chats, strict=True)):
        if chat is not None:
            inputs.append(turns(json.loads(chat)))  # checked by the reader
        elif prompt is not None and prompt.strip():
            inputs.append(prompt)
        else:
            line = table.line_of(pl.Series([i], dtype=pl.UInt32))[0]
            raise InvalidRequestError(f"{name} line {line}: give a non-empty prompt or messages")
    if not inputs:
        raise InvalidRequestError(f"{name}: no prompts found")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequestError(f"{name}: {len(inputs):,} prompts; at most {MAX_INPUTS:,}")
    return inputs


def chunks(inputs: list[Any], size: int) -> list[tuple[int, list[Any]]]:
    """``inputs`` cut into ``(index of the first, chunk)`` pairs of ``size``."""
    return [(start, inputs[start : start + size]) for start in range(0, len(inputs), size)]


def pinned(config: BatchCompleteConfig) -> BatchCompleteConfig:
    """``config`` with its model reference resolved to the exact model (an alias moved by a
    promotion mid-job must not mix two models, nor let a retry reuse the other's chunks)."""
    from loraflow import registry

    version = config.model.partition("/")[2]
    if "@" in config.model or (version.isdigit() and "/" not in version):
        return config.model_copy(update={"model": registry.resolve(config.model)})
    return config  # a base model or a fine-tune's own name: exact already


def chunk_lines(config: BatchCompleteConfig, start: int, chunk: list[Any]) -> tuple[str, int]:
    """The result lines of one chunk whose first input is ``start``, and its new tokens."""
    from loraflow import completion

    p = completion.params(**config.model_dump(include=set(completion.Params.model_fields)))
    lines, tokens = [], 0
    for first in range(0, len(chunk), config.batch_size):
        part = chunk[first : first + config.batch_size]
        results = completion.generate(
            config.model, part, p, config.num_generations, config.batch_size
        )
        for k, (item, result) in enumerate(zip(part, results, strict=True)):
            key = "prompt" if isinstance(item, str) else "messages"
            index = start + first + k
            lines.append(json.dumps({"index": index, key: item, **result.model_dump()}) + "\n")
            tokens += sum(result.statistics.output_tokens)
    return "".join(lines), tokens


def finish(
    config: BatchCompleteConfig, job_id: str, done: list[tuple[str, int]], inputs: int
) -> BatchResult:
    """Write every chunk's lines, in order, once; store and return the job's summary."""
    data = "".join(lines for lines, _ in done).encode()
    location = write_results(config.output_data_path, job_id, data)
    summary = BatchResult(
        job_id=job_id,
        output_data_path=location,
        inputs=inputs,
        completion_tokens=sum(tokens for _, tokens in done),
    )
    get_store().put(_summary_key(job_id), summary.model_dump_json().encode())
    return summary


def run(
    config: BatchCompleteConfig,
    job_id: str,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    """Generate for every input in this process, a chunk at a time; write the results.

    ``progress(done, total)`` is called after each chunk; ``should_stop()`` is asked before
    each, and a True ends the job with JobCancelled and writes nothing.
    """
    config = pinned(config)
    inputs = load_inputs(config.input_data_path)
    done = []
    for start, chunk in chunks(inputs, config.batch_size):
        if should_stop is not None and should_stop():
            raise JobCancelled(f"{job_id} cancelled after {start} of {len(inputs)} inputs")
        done.append(chunk_lines(config, start, chunk))
        if progress is not None:
            progress(start + len(chunk), len(inputs))
    return finish(config, job_id, done, len(inputs))


def read_result(job_id: str) -> BatchResult | None:
    """The summary a finished job left in the store, or None."""
    try:
        return BatchResult.model_validate_json(get_store().get_bytes(_summary_key(job_id)))
    except NotFoundError:
        return None


class JobCancelled(Exception):
    """A batch job stopped because it was cancelled."""


def store_inputs(job_id: str, inputs: Sequence[str | list[dict[str, str]]]) -> str:
    """Store prompts and chats given inline as the job's JSONL input; returns its location."""
    from loraflow.completion import check_inputs

    check_inputs(inputs)
    lines = [json.dumps({"prompt": x} if isinstance(x, str) else {"messages": x}) for x in inputs]
    get_store().put(_inputs_key(job_id), ("\n".join(lines) + "\n").encode())
    return f"{get_store().uri.rstrip('/')}/{_inputs_key(job_id)}"


def read_results(job_id: str) -> list[dict[str, Any]]:
    """The result lines of a completed job, wherever they were written."""
    result = read_result(job_id)
    if result is None:
        raise NotFoundError(f"{job_id} has no results")
    data, _ = locations.read(result.output_data_path, "output_data_path")
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def default_output(job_id: str) -> str:
    """Where a job's results go when it names no output location."""
    return f"{get_store().uri.rstrip('/')}/{_results_key(job_id)}"


def _inputs_key(job_id: str) -> str:
    return f"batch-completions/{job_id}/inputs.jsonl"


def _results_key(job_id: str) -> str:
    return f"batch-completions/{job_id}/results.jsonl"


def _summary_key(job_id: str) -> str:
    return f"batch-completions/{job_id}/job.json"


def write_results(location: str | None, job_id: str, data: bytes) -> str:
    """Write ``data`` whole to ``location`` (default: the store); returns its URL or path."""
    if location is None:
        get_store().put(_results_key(job_id), data)
        return default_output(job_id)
    return locations.write(location, data)
