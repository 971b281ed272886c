"""Commands on fine-tune jobs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from loraflow.cli._app import ID_COLUMN, app, handle_errors, out, prefect

ft_app = typer.Typer(help="Fine-tune jobs: create, get, list, events, wait, cancel, resume.")
app.add_typer(ft_app, name="fine-tunes")


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
    with prefect():
        job = FineTune.create(model, training_file, validation_file, params, suffix=suffix)
        out.print(job.id)
        if wait:
            _exit_with(FineTune.wait(job.id))


@ft_app.command("get")
@handle_errors
def ft_get(job_id: str) -> None:
    """Show a job's status and output model."""
    from loraflow import FineTune

    with prefect():
        out.print_json(FineTune.get(job_id).model_dump_json())


@ft_app.command("list")
@handle_errors
def ft_list() -> None:
    """List fine-tune jobs, oldest first."""
    from loraflow import FineTune

    table = Table(ID_COLUMN, "status", Column("fine_tuned_model", overflow="fold"))
    with prefect():
        for job in FineTune.list().jobs:
            table.add_row(job.id, job.status, job.fine_tuned_model or "")
    out.print(table)


@ft_app.command("events")
@handle_errors
def ft_events(job_id: str) -> None:
    """Print a job's events: state changes, lifecycle messages, metrics a step."""
    from datetime import datetime

    from loraflow import FineTune

    with prefect():
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

    with prefect():
        _exit_with(FineTune.wait(job_id, timeout=timeout))


@ft_app.command("cancel")
@handle_errors
def ft_cancel(job_id: str) -> None:
    """Cancel a job; it checkpoints and ends CANCELLED."""
    from loraflow import FineTune

    with prefect():
        done = FineTune.cancel(job_id).success
    out.print(f"cancelling {job_id}" if done else f"{job_id} has already ended")


@ft_app.command("resume")
@handle_errors
def ft_resume(job_id: str) -> None:
    """Run a failed job again from its last checkpoint."""
    from loraflow import FineTune

    with prefect():
        out.print_json(FineTune.resume(job_id).model_dump_json())


def _exit_with(job: Any) -> None:
    out.print(f"{job.id}: {job.status} {job.fine_tuned_model or ''}")
    if job.status != "SUCCESS":
        raise typer.Exit(1)
