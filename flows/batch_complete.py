"""Flow: a batch completion job; prompts from a file in, JSONL results in storage out.

``Completion.batch_create`` starts it as a run of ``batch-complete/loraflow`` named by the job
id (``batch-…``), so it has a status and can be cancelled like LLM Engine's batch jobs. It
also runs from the Prefect UI, on a schedule, or from Python:
``batch_complete(BatchCompleteConfig(model="…", input_data_path="file-…"))``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Cancelled

from loraflow.batch import FLOW_NAME, JOB_IDS, TAG, BatchCompleteConfig, JobCancelled
from loraflow.heartbeat import beating
from loraflow.jobs import job_identity
from tasks.complete import generate_batch


@flow(name=FLOW_NAME, log_prints=True)
def batch_complete(config: BatchCompleteConfig = BatchCompleteConfig()) -> Any:  # noqa: B008
    """Generate for every prompt; returns the BatchResult with the results' location."""
    job_id = job_identity(JOB_IDS, TAG)
    get_run_logger().info(f"batch job {job_id}: {config.input_data_path} with {config.model}")
    try:
        with beating(job_id):
            return generate_batch(config, job_id)
    except JobCancelled as exc:
        return Cancelled(message=str(exc))
