"""Prefect tasks that generate: ``complete`` for any pipeline, and a batch job's chunks.

The engine lives once per process (``loraflow.engine.get_engine``): the first call in a
worker loads the base model, later calls, from any flow run in that process, reuse it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Unpack
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from loraflow.batch import BatchCompleteConfig, BatchResult
from loraflow.types import CompletionSyncResponse, SamplingOptions


@task(name="complete", cache_policy=NO_CACHE)
def complete(
    model: str,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.2,
    **options: Unpack[SamplingOptions],
) -> CompletionSyncResponse:
    """Complete a prompt (or chat messages) with a model reference; ``.output.text`` is it.

    ``model``: a base model, a fine-tuned model name, ``family@alias`` or ``family/version``;
    ``options``: the rest of LLM Engine's sampling settings (``stop_sequences``, ``seed``…;
    ``timeout`` defaults to 60 s). Bad input raises InvalidRequestError naming the field;
    nothing is retried.
    """
    from loraflow import completion

    options.setdefault("timeout", 60)
    p = completion.params(max_new_tokens=max_new_tokens, temperature=temperature, **options)
    response = completion.complete(model, prompt, messages, p)
    out = response.output
    get_run_logger().info(
        f"{model}: {out.num_prompt_tokens} prompt + {out.num_completion_tokens} new tokens "
        f"({out.finish_reason})"
    )
    return response


def _chunk_key(context: Any, parameters: dict[str, Any]) -> str:
    """A chunk's cache key: its job, exact model and settings, and its inputs' content."""
    import hashlib
    import json

    described = {
        "job_id": parameters["job_id"],
        "config": parameters["config"].model_dump(mode="json", exclude={"workers"}),
        "start": parameters["start"],
        "chunk": parameters["chunk"],
    }
    return "loraflow-chunk-" + hashlib.sha256(json.dumps(described).encode()).hexdigest()


@task(
    name="generate-chunk",
    cache_key_fn=_chunk_key,
    cache_expiration=timedelta(days=7),
    persist_result=True,
    retries=2,
    retry_delay_seconds=2,
)
def generate_chunk(
    config: BatchCompleteConfig, job_id: str, start: int, chunk: list[Any], threads: int | None
) -> tuple[str, int]:
    """Generate one chunk of a batch job on a cluster worker: its result lines, new tokens.

    Cached by content: a retried job (a killed worker, a flow retry) skips the chunks done.
    """
    from loraflow import batch

    if threads:  # a local cluster: each worker takes its share of the cores
        import torch

        torch.set_num_threads(threads)
    lines, tokens = batch.chunk_lines(config, start, chunk)
    get_run_logger().info(f"inputs {start}..{start + len(chunk) - 1}: {tokens} new tokens")
    return lines, tokens


def chunk_runner(config: BatchCompleteConfig) -> tuple[Any, int | None]:
    """The task runner of a batch job's chunks, and the threads each worker takes.

    The Dask cluster at ``batch.cluster_address``; else a local Dask cluster of ``workers``
    processes; with one worker, this process (a one-worker cluster only adds its start-up:
    15 s measured in benchmarks/distributed.py). ConfigError, before anything runs, for a
    scheduler that does not answer or more workers than this machine has cores.
    """
    import os

    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from loraflow.errors import ConfigError
    from loraflow.settings import get_settings

    settings = get_settings().batch
    if settings.cluster_address:
        _check_scheduler(settings.cluster_address)
        return DaskTaskRunner(address=settings.cluster_address), None
    workers = config.workers or settings.workers
    cores = len(os.sched_getaffinity(0))
    if workers > cores:
        field = "workers" if config.workers else "batch.workers (LORAFLOW_BATCH__WORKERS)"
        raise ConfigError(
            f"{field}: {workers} local workers, but this machine has {cores} cores; lower it, "
            "or set batch.cluster_address to a Dask cluster"
        )
    if workers == 1:
        return ThreadPoolTaskRunner(max_workers=1), None
    cluster = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }
    return DaskTaskRunner(cluster_kwargs=cluster), max(cores // workers, 1)


def _check_scheduler(address: str) -> None:
    import socket
    from urllib.parse import urlsplit

    from loraflow.errors import ConfigError

    where = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        with socket.create_connection((where.hostname or "", where.port or 8786), timeout=5):
            return
    except OSError as exc:
        raise ConfigError(
            f"batch.cluster_address: no Dask scheduler answers at {address} ({exc}); start "
            "it, or unset batch.cluster_address (LORAFLOW_BATCH__CLUSTER_ADDRESS) for a local "
            "cluster"
        ) from None


@task(name="load-batch-inputs", cache_policy=NO_CACHE)
def load_batch_inputs(config: BatchCompleteConfig) -> list[Any]:
    """The job's inputs, read and checked (the first bad row is the error)."""
    from loraflow import batch

    inputs = batch.load_inputs(config.input_data_path)
    get_run_logger().info(f"{len(inputs)} inputs from {config.input_data_path}")
    return inputs


@task(name="write-batch-results", cache_policy=NO_CACHE)
def write_batch_results(
    config: BatchCompleteConfig, job_id: str, done: list[tuple[str, int]], inputs: int
) -> BatchResult:
    """Write every chunk's results, in input order, once."""
    from loraflow import batch

    result = batch.finish(config, job_id, done, inputs)
    get_run_logger().info(f"{inputs} results written to {result.output_data_path}")
    return result


def is_cancelling_now() -> bool:
    """Whether this flow run is being cancelled."""
    from prefect.runtime import flow_run

    from loraflow.jobs import is_cancelling

    run_id: Any = flow_run.id
    return bool(run_id) and is_cancelling(UUID(str(run_id)))
