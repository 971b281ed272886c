"""Prefect tasks that generate: ``complete`` for any pipeline, and a whole batch job.

The engine lives once per process (``loraflow.engine.get_engine``): the first call in a
worker loads the base model, later calls, from any flow run in that process, reuse it.
"""

from __future__ import annotations

from typing import Any, Unpack
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from loraflow.batch import BatchCompleteConfig, BatchResult
from loraflow.types import CompletionSyncResponse, SamplingOptions


@task(name="complete", tags=["loraflow", "completion"], cache_policy=NO_CACHE)
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


@task(name="generate-batch", tags=["loraflow", "completion"], cache_policy=NO_CACHE)
def generate_batch(config: BatchCompleteConfig, job_id: str) -> BatchResult:
    """Run a batch job in this process, logging progress and stopping if it is cancelled."""
    from prefect.runtime import flow_run

    from loraflow import batch
    from loraflow.jobs import is_cancelling

    logger = get_run_logger()
    run_id: Any = flow_run.id

    def progress(done: int, total: int) -> None:
        logger.info(f"{done}/{total} inputs done")

    return batch.run(
        config, job_id, progress, lambda: bool(run_id) and is_cancelling(UUID(str(run_id)))
    )
