"""Task: validate a dataset and publish the report as Prefect artifacts."""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from loraflow.data import ValidationReport, ValidationSummary, validate
from loraflow.errors import DataValidationError
from loraflow.settings import ValidationConfig, get_settings

ARTIFACT_ROWS = 1000


def artifact_key(prefix: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for ``name``."""
    return f"{prefix}-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset")


def publish_report(report: ValidationReport) -> None:
    """Show the report in the Prefect UI: a markdown summary and a table of problems."""
    key = artifact_key("validation", report.source)
    create_markdown_artifact(
        markdown=report.to_markdown(limit=20), key=key, description="Dataset validation summary"
    )
    summary = report.summary()
    head = summary.model_dump(include={"source", "format", "rows", "valid"})
    create_table_artifact(
        table=[
            {**head, "check": c, "problems": n}
            for c, n in (summary.counts or {"(none)": 0}).items()
        ],
        key=f"{key}-summary",
        description=f"Problems of {report.source} by check",
    )
    if report.issues:
        create_table_artifact(
            table=report.issues[:ARTIFACT_ROWS],
            key=f"{key}-problems",
            description=f"First {ARTIFACT_ROWS:,} of {len(report.issues):,} problems",
        )


@task(name="validate-dataset", tags=["loraflow", "data"])
def validate_dataset(
    path: Path, name: str | None = None, limits: ValidationConfig | None = None
) -> ValidationSummary:
    """Check every row of ``path``; publish the report; raise DataValidationError if invalid."""
    dataset = validate(path, name=name, config=limits or get_settings().validation)
    publish_report(dataset.report)
    logger = get_run_logger()
    for line in dataset.report.describe().splitlines():
        logger.info(line)
    if not dataset.report.valid:
        raise DataValidationError(dataset.report)
    return dataset.report.summary()
