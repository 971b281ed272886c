"""Prefect tasks around the model registry: register a fine-tune with its lineage."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from loraflow.registry import ModelRecord


@task(
    name="register-model",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
)
def register_model(record: ModelRecord) -> ModelRecord:
    """Register a trained fine-tune as a version of its family and store its record."""
    from loraflow import registry

    record = registry.register(record)
    get_run_logger().info(
        f"registered {record.fine_tuned_model} as {record.registered_model} "
        f"version {record.version}"
    )
    return record
