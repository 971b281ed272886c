"""Task: ingest a dataset (validate once, split, store) and show its report in the UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from loraflow.errors import DataValidationError, StorageError
from loraflow.files import FileRepository, Ingested
from loraflow.settings import ValidationConfig, get_settings
from tasks.validate import publish_report


def _storage_failed(task: Any, run: Any, state: Any) -> bool:
    """Retry only what storage broke: bad data fails the same way every time."""
    try:
        state.result()
    except StorageError:
        return True
    except Exception:
        return False
    return False


# A failed store leaves nothing behind, so a retry is safe.
@task(
    name="ingest-dataset",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_storage_failed,
    cache_policy=NO_CACHE,
)
def ingest_dataset(
    path: Path, fraction: float, seed: int, limits: ValidationConfig | None = None
) -> Ingested:
    """Validate ``path`` once, split off ``fraction`` as validation and store the parts;
    the report goes to the run's artifacts and log whether or not the data is valid."""
    settings = get_settings()
    repository = FileRepository.from_settings()
    repository.validation = limits or settings.validation
    logger = get_run_logger()
    try:
        stored = repository.ingest(path, fraction, seed)
    except DataValidationError as exc:
        publish_report(exc.report)
        logger.error(str(exc))
        raise
    publish_report(stored.report)
    for line in stored.report.describe().splitlines():
        logger.info(line)
    return stored
