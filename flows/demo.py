"""The demo: run loraflow's pipeline on the bundled dataset with the embedded defaults.

``make demo`` (or ``loraflow demo``) runs it. Today it validates the bundled customer-support
dataset, stores a seeded train/validation split and lists the stored files; the fine-tuning
stages join it as they land.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Column, Table

from flows.ingest import IngestConfig, ingest
from loraflow import File
from loraflow.cli import ID_COLUMN
from loraflow.data import validate
from loraflow.data.sources import resolve_source
from loraflow.orchestration import prefect_api
from loraflow.settings import get_settings


def run(console: Console | None = None) -> None:
    """Run the demo and print what it did."""
    console = console or Console()
    settings = get_settings()
    config = IngestConfig()
    console.rule("[bold]loraflow demo")
    console.print(f"home: {settings.home}   storage: {settings.storage_url}")
    console.print(validate(resolve_source(config.source)).report.describe())
    with prefect_api(settings):
        result = ingest(config)
    table = Table(ID_COLUMN, Column("filename", overflow="fold"), "rows", "sha256")
    for f in File.list().files:
        if f.id in {result.training_file, result.validation_file}:
            table.add_row(f.id, f.filename, str(f.rows), (f.sha256 or "")[:16] + "…")
    console.print(table)
    console.print(
        "Next: [bold]loraflow files list[/bold], [bold]loraflow validate <your.csv>[/bold]; "
        "runs show in the Prefect UI when LORAFLOW_PREFECT_API_URL names a Prefect server."
    )


if __name__ == "__main__":
    run()
