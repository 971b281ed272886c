"""The ``loraflow`` command line. Imports stay light: heavy modules load inside commands."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from loraflow.errors import DataValidationError, LoraflowError

app = typer.Typer(
    name="loraflow",
    help="Self-hosted LoRA fine-tuning and completion, orchestrated by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
files_app = typer.Typer(help="Stored datasets: upload, get, list, download, delete.")
app.add_typer(files_app, name="files")
ft_app = typer.Typer(help="Fine-tune jobs: create, get, list, events, wait, cancel, resume.")
app.add_typer(ft_app, name="fine-tunes")
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
ID_COLUMN = Column("id", no_wrap=True, min_width=25)  # ids are copied from here: never cut


def handle_errors(func: F) -> F:
    """Turn loraflow's errors into a message on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DataValidationError as exc:
            print_report(exc.report, limit=50, console=err)
            raise typer.Exit(1) from None
        except LoraflowError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_report(report: Any, limit: int, console: Console = out) -> None:
    """The report as a rich table of problems (the first ``limit``; 0 means all)."""
    verdict = "[green]valid[/green]" if report.valid else "[red]not valid[/red]"
    console.print(f"{report.source}: {verdict} — {report.rows:,} rows, format {report.format}")
    issues = report.issues if limit == 0 else report.issues[:limit]
    if issues:
        table = Table("severity", "line", "column", "check", "message", "value")
        for i in issues:
            style = "red" if i["severity"] == "error" else "yellow"
            table.add_row(
                f"[{style}]{i['severity']}[/{style}]",
                str(i["line"] or ""),
                i["column"] or "",
                i["check"],
                i["message"],
                "" if i["value"] is None else repr(i["value"]),
            )
        console.print(table)
    if len(report.issues) > len(issues):
        console.print(f"… {len(report.issues) - len(issues):,} more (use --limit 0 to show all)")
    counts = report.counts()
    if counts:
        console.print("by check: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


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


@ft_app.command("create")
@handle_errors
def ft_create(
    training_file: Annotated[str, typer.Argument(help="File id of the training data.")],
    model: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m-instruct",
    validation_file: Annotated[str | None, typer.Option(help="File id of validation data.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Model name suffix.")] = None,
    hyperparameters: Annotated[
        str | None,
        typer.Option("--hyperparameters", "-p", help="JSON object, e.g. '{\"epochs\": 3}'."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job to end.")] = False,
) -> None:
    """Start a fine-tune; prints its job id (and, with --wait, its final status)."""
    from loraflow import FineTune
    from loraflow.errors import InvalidRequestError

    try:
        params = json.loads(hyperparameters) if hyperparameters else None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"--hyperparameters is not JSON: {exc}") from None
    with _prefect():
        job = FineTune.create(model, training_file, validation_file, params, suffix=suffix)
        out.print(job.id)
        if wait:
            _exit_with(FineTune.wait(job.id))


@ft_app.command("get")
@handle_errors
def ft_get(job_id: str) -> None:
    """Show a job's status and output model."""
    from loraflow import FineTune

    with _prefect():
        out.print_json(FineTune.get(job_id).model_dump_json())


@ft_app.command("list")
@handle_errors
def ft_list() -> None:
    """List fine-tune jobs, oldest first."""
    from loraflow import FineTune

    table = Table(ID_COLUMN, "status", Column("fine_tuned_model", overflow="fold"))
    with _prefect():
        for job in FineTune.list().jobs:
            table.add_row(job.id, job.status, job.fine_tuned_model or "")
    out.print(table)


@ft_app.command("events")
@handle_errors
def ft_events(job_id: str) -> None:
    """Print a job's events: state changes, lifecycle messages, metrics a step."""
    from datetime import datetime

    from loraflow import FineTune

    with _prefect():
        for event in FineTune.get_events(job_id).events:
            when = datetime.fromtimestamp(event.timestamp or 0).strftime("%H:%M:%S")
            out.print(f"{when} {event.level:7} {event.message}", highlight=False, markup=False)


@ft_app.command("wait")
@handle_errors
def ft_wait(
    job_id: str,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Wait for a job to end; exit 0 on SUCCESS, 1 otherwise."""
    from loraflow import FineTune

    with _prefect():
        _exit_with(FineTune.wait(job_id, timeout=timeout))


@ft_app.command("cancel")
@handle_errors
def ft_cancel(job_id: str) -> None:
    """Cancel a job; it checkpoints and ends CANCELLED."""
    from loraflow import FineTune

    with _prefect():
        done = FineTune.cancel(job_id).success
    out.print(f"cancelling {job_id}" if done else f"{job_id} has already ended")


@ft_app.command("resume")
@handle_errors
def ft_resume(job_id: str) -> None:
    """Run a failed job again from its last checkpoint."""
    from loraflow import FineTune

    with _prefect():
        out.print_json(FineTune.resume(job_id).model_dump_json())


def _exit_with(job: Any) -> None:
    out.print(f"{job.id}: {job.status} {job.fine_tuned_model or ''}")
    if job.status != "SUCCESS":
        raise typer.Exit(1)


def _prefect() -> Any:
    from loraflow.orchestration import prefect_api

    return prefect_api()


@app.command()
@handle_errors
def worker(
    limit: Annotated[int, typer.Option(help="Flow runs at once.")] = 1,
    poll: Annotated[float, typer.Option(help="Seconds between polls for new runs.")] = 2.0,
) -> None:
    """Serve loraflow's deployments here: runs fine-tunes that FineTune.create starts."""
    from deployments.local import serve

    with _prefect():
        serve(limit=limit, poll_seconds=poll)


@app.command()
@handle_errors
def demo() -> None:
    """Run the pipeline on the bundled dataset with the embedded defaults."""
    from flows.demo import run

    run(out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
