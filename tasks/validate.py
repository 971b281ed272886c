"""Publishing a validation report as Prefect artifacts, and artifact keys."""

from __future__ import annotations

import re

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from loraflow.data import ValidationReport

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
