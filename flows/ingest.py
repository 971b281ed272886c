"""Flow: validate a dataset, optionally split off a validation set, and store the files.

Run it from Python (``ingest(IngestConfig(source="data.csv"))``), as a deployment, or as
``python -m flows.ingest config.yaml``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from loraflow.data.sources import resolve_source
from loraflow.settings import ValidationConfig, get_settings
from tasks.files import split_dataset, upload_file
from tasks.validate import validate_dataset


class IngestConfig(BaseModel):
    """What to ingest and how."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "builtin:customer_support.csv",
        description="Local CSV/JSONL path, or builtin:<name> for a bundled dataset.",
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of rows split off as the validation file; 0 keeps all."
    )
    seed: int = Field(42, description="Seed of the train/validation split.")
    limits: ValidationConfig | None = Field(
        None, description="Validation limits; unset uses the stack settings."
    )


class IngestResult(BaseModel):
    """The stored files."""

    training_file: str
    validation_file: str | None
    training_rows: int
    validation_rows: int
    sha256: str


@flow(name="ingest", log_prints=True)
def ingest(config: IngestConfig = IngestConfig()) -> IngestResult:  # noqa: B008
    """Validate ``config.source``, split it if asked, store the parts; return their file ids."""
    path = resolve_source(config.source)
    validate_dataset(path, name=path.name, limits=config.limits)
    if config.validation_fraction == 0:
        record = upload_file(path, filename=path.name)
        return IngestResult(
            training_file=record.id,
            validation_file=None,
            training_rows=record.rows,
            validation_rows=0,
            sha256=record.sha256,
        )
    work = get_settings().home / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as out_dir:
        parts = split_dataset(
            path, config.validation_fraction, config.seed, Path(out_dir), limits=config.limits
        )
        train = upload_file(parts.training)
        val = upload_file(parts.validation)
    result = IngestResult(
        training_file=train.id,
        validation_file=val.id,
        training_rows=train.rows,
        validation_rows=val.rows,
        sha256=train.sha256,
    )
    print(
        f"stored {result.training_file} ({result.training_rows} rows) and "
        f"{result.validation_file} ({result.validation_rows} rows)"
    )
    return result


if __name__ == "__main__":
    from flows import main

    main(ingest, sys.argv)
