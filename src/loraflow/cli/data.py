"""Commands on datasets: validate, and the stored files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Column, Table

from loraflow.cli._app import ID_COLUMN, app, err, handle_errors, out, print_report

files_app = typer.Typer(help="Stored datasets: upload, get, list, download, delete.")
app.add_typer(files_app, name="files")


@app.command()
@handle_errors
def validate(
    path: Annotated[
        Path, typer.Argument(help="CSV or JSONL dataset.", exists=True, dir_okay=False)
    ],
    max_rows: Annotated[int | None, typer.Option(help="Most data rows allowed.")] = None,
    max_field_chars: Annotated[int | None, typer.Option(help="Longest value allowed.")] = None,
    duplicates: Annotated[
        Literal["warn", "error"] | None, typer.Option(help="Whether repeated rows fail.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Problems to print; 0 prints all.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check every row of a dataset; exit 1 if it is not valid."""
    from loraflow.data import validate as run_validation
    from loraflow.settings import get_settings

    limits = {"max_rows": max_rows, "max_field_chars": max_field_chars, "duplicates": duplicates}
    config = get_settings().validation.model_copy(
        update={k: v for k, v in limits.items() if v is not None}
    )
    report = run_validation(path, config=config).report
    if as_json:
        payload = {"summary": report.summary().model_dump(), "issues": report.issues}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        print_report(report, limit)
    if not report.valid:
        raise typer.Exit(1)


@files_app.command("upload")
@handle_errors
def files_upload(
    path: Annotated[
        Path, typer.Argument(help="CSV or JSONL dataset.", exists=True, dir_okay=False)
    ],
) -> None:
    """Validate and store a dataset; prints its file id."""
    from loraflow import File

    out.print(File.upload(path).id)


@files_app.command("get")
@handle_errors
def files_get(file_id: str) -> None:
    """Show a stored file's metadata."""
    from loraflow import File

    out.print_json(File.get(file_id).model_dump_json())


@files_app.command("list")
@handle_errors
def files_list() -> None:
    """List stored files, oldest first."""
    from loraflow import File

    table = Table(ID_COLUMN, Column("filename", overflow="fold"), "rows", "size", "created")
    for f in File.list().files:
        created = f.created_at.strftime("%Y-%m-%d %H:%M:%S") if f.created_at else ""
        table.add_row(f.id, f.filename, f"{f.rows or 0:,}", f"{f.size:,}", created)
    out.print(table)


@files_app.command("download")
@handle_errors
def files_download(
    file_id: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print a stored file's content, or write it to --output."""
    from loraflow import File

    content = File.download(file_id).content
    if output is None:
        sys.stdout.write(content)
    else:
        output.write_text(content, encoding="utf-8")
        err.print(f"wrote {output}")


@files_app.command("delete")
@handle_errors
def files_delete(file_id: str) -> None:
    """Delete a stored file."""
    from loraflow import File

    out.print(f"deleted {file_id}" if File.delete(file_id).deleted else f"{file_id} not found")
