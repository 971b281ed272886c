"""Flow: validate a dataset, optionally split off a validation set, and store the files.

Run it from Python (``ingest(IngestConfig(source="data.csv"))``), as a deployment, or as
``python -m flows.ingest config.yaml``.
"""

from __future__ import annotations

import sys

from prefect import flow

from loraflow.data.sources import resolve_source
from loraflow.files import IngestConfig, IngestResult
from tasks.files import ingest_dataset


@flow(name="ingest", log_prints=True)
def ingest(config: IngestConfig = IngestConfig()) -> IngestResult:  # noqa: B008
    """Validate ``config.source`` once, split it if asked, store the parts; their file ids."""
    stored = ingest_dataset(
        resolve_source(config.source), config.validation_fraction, config.seed, config.limits
    )
    result = IngestResult(
        training_file=stored.training.id,
        validation_file=stored.validation.id if stored.validation else None,
        training_rows=stored.training.rows,
        validation_rows=stored.validation.rows if stored.validation else 0,
        sha256=stored.training.sha256,
        validation=stored.report.summary(),
    )
    print(
        f"stored {result.training_file} ({result.training_rows} rows)"
        + (
            f" and {result.validation_file} ({result.validation_rows} rows)"
            if stored.validation
            else ""
        )
    )
    return result


if __name__ == "__main__":
    from flows import main

    main(ingest, sys.argv)
