"""Flow: a batch completion job; prompts from a file in, JSONL results in storage out.

``Completion.batch_create`` starts it as a run of ``batch-complete/generate-to-jsonl`` named by
the job id (``batch-…``), so it has a status and can be cancelled like LLM Engine's batch jobs. It
also runs from the Prefect UI, on a schedule, or from Python:
``batch_complete(BatchCompleteConfig(model="…", input_data_path="file-…"))``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Cancelled

from loraflow.batch import (
    FLOW_NAME,
    JOB_IDS,
    TAG,
    BatchCompleteConfig,
    JobCancelled,
    chunks,
    pinned,
)
from loraflow.heartbeat import beating
from loraflow.jobs import job_identity
from tasks.complete import (
    chunk_runner,
    generate_chunk,
    is_cancelling_now,
    load_batch_inputs,
    write_batch_results,
)


@flow(name=FLOW_NAME, log_prints=True)
def batch_complete(config: BatchCompleteConfig = BatchCompleteConfig()) -> Any:  # noqa: B008
    """Generate for every prompt; returns the BatchResult with the results' location.

    The inputs are cut into chunks of ``chunk_size`` that ``generate-chunk`` tasks run on the
    Dask cluster at ``batch.cluster_address``, else on a local one of ``workers`` processes,
    else (one worker, the default) in this process. Each
    chunk is cached by its content, so a retried job redoes only what was not finished; the
    results are written once, whole, when every chunk is done.
    """
    job_id = job_identity(JOB_IDS, TAG)
    logger = get_run_logger()
    logger.info(f"batch job {job_id}: {config.input_data_path} with {config.model}")
    try:
        with beating(job_id):
            config = pinned(config)
            runner, threads = chunk_runner(config)
            inputs = load_batch_inputs(config)
            pieces = chunks(inputs, config.chunk_size)
            with runner:
                futures = [
                    runner.submit(
                        generate_chunk,
                        {
                            "config": config,
                            "job_id": job_id,
                            "start": start,
                            "chunk": chunk,
                            "threads": threads,
                        },
                    )
                    for start, chunk in pieces
                ]
                _wait(futures, job_id, logger)
                done = [f.result() for f in futures]
            return write_batch_results(config, job_id, done, len(inputs))
    except JobCancelled as exc:
        return Cancelled(message=str(exc))


def _wait(futures: list[Any], job_id: str, logger: Any) -> None:
    """Wait for every chunk, logging progress; a cancel ends the job, writing nothing."""
    from prefect.futures import wait

    pending, reported = list(futures), -1
    while pending:
        pending = list(wait(pending, timeout=2).not_done)
        finished = len(futures) - len(pending)
        if finished != reported:
            logger.info(f"{finished}/{len(futures)} chunks done")
            reported = finished
        if pending and is_cancelling_now():
            raise JobCancelled(f"{job_id} cancelled with {finished} of {len(futures)} chunks done")


if __name__ == "__main__":
    import sys

    from flows import main

    main(batch_complete, sys.argv)
