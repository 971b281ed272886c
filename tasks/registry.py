"""Prefect tasks around the model registry: register a fine-tune with its lineage."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE


def lineage(record: dict[str, Any], flow_run_id: str | None) -> dict[str, str]:
    """The tags a registered version carries: data, base, runs and metrics it came from."""
    keys = (
        "job_id",
        "base_model",
        "base_revision",
        "training_file",
        "training_sha256",
        "validation_file",
        "validation_sha256",
        "mlflow_run_id",
        "steps",
        "train_loss",
        "eval_loss",
    )
    tags = {f"loraflow.{k}": str(record[k]) for k in keys if record.get(k) is not None}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    return tags


@task(
    name="register-model",
    tags=["loraflow", "registry"],
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
)
def register_model(fine_tuned_model: str) -> dict[str, Any]:
    """Register a trained fine-tune as a version of its family in MLflow's model registry."""
    from prefect.runtime import flow_run

    from loraflow import registry

    record = registry.read_record(fine_tuned_model)
    run_id = str(flow_run.id) if flow_run.id else None
    record = registry.register(record, lineage(record, run_id))
    get_run_logger().info(
        f"registered {fine_tuned_model} as {record['registered_model']} version {record['version']}"
    )
    return record
