"""Serve loraflow's deployments from this process: the local runner behind ``loraflow worker``.

A Prefect runner polls the API for scheduled runs of these deployments and runs each in a
subprocess; cancelling a run sends that subprocess SIGTERM, which training turns into a
checkpoint and a CANCELLED job.
"""

from __future__ import annotations

from typing import Any

from loraflow.fine_tuning import DEPLOYMENT_NAME, TAG


def local_deployments() -> list[Any]:
    """The deployments a local runner serves (entrypoints are module paths: any cwd works)."""
    from prefect.deployments.runner import EntrypointType

    from flows.batch_complete import batch_complete
    from flows.fine_tune import fine_tune
    from flows.ingest import ingest
    from flows.promote import promote
    from loraflow.batch import TAG as BATCH_TAG

    return [
        fine_tune.to_deployment(
            name=DEPLOYMENT_NAME,
            tags=[TAG],
            description="LoRA fine-tune of a base model on stored files (FineTune.create).",
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        ingest.to_deployment(
            name=DEPLOYMENT_NAME,
            description="Validate, split and store a dataset.",
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        batch_complete.to_deployment(
            name=DEPLOYMENT_NAME,
            tags=[BATCH_TAG],
            description="Complete every prompt of a file; JSONL results to storage.",
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        promote.to_deployment(
            name=DEPLOYMENT_NAME,
            description="Score a fine-tune beside the champion; move the alias if it is better.",
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    ]


def serve(limit: int = 1, poll_seconds: float = 2.0) -> None:
    """Register the deployments and run their flow runs until interrupted.

    ``limit`` caps concurrent runs (one training at a time suits one device).
    """
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_RUNNER_POLL_FREQUENCY: max(1, round(poll_seconds))}):
        prefect_serve(*local_deployments(), limit=limit)
