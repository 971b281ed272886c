"""Commands on fine-tune jobs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from loraflow.cli._app import ID_COLUMN, app, err, handle_errors, out, prefect

FOLLOW_SECONDS = 2.0  # between reads of a running job's events or progress
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
    """Show a job's status, output model, progress (step of all, epoch, latest losses, time
    left) and its Prefect and MLflow pages, as JSON."""
    from loraflow import FineTune

    with prefect():
        job = FineTune.get(job_id)
        progress = FineTune.progress(job_id).model_dump(exclude={"history", "id", "status"})
    out.print_json(json.dumps(job.model_dump() | progress))


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
def ft_events(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends.")
    ] = False,
) -> None:
    """Print a job's events: state changes, lifecycle messages, metrics a step."""
    import time
    from datetime import datetime

    from loraflow import FineTune
    from loraflow.jobs import ENDED

    shown = 0
    with prefect():
        while True:
            ended = FineTune.get(job_id).status in ENDED  # before reading: nothing comes after
            events = FineTune.get_events(job_id).events
            for event in events[shown:]:
                when = datetime.fromtimestamp(event.timestamp or 0).strftime("%H:%M:%S")
                out.print(f"{when} {event.level:7} {event.message}", highlight=False, markup=False)
            shown = len(events)
            if not follow or ended:
                return
            time.sleep(FOLLOW_SECONDS)


@ft_app.command("wait")
@handle_errors
def ft_wait(
    job_id: str,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Wait for a job to end, showing its progress; exit 0 on SUCCESS, 1 otherwise."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from loraflow import FineTune
    from loraflow.errors import LoraflowError
    from loraflow.jobs import ENDED

    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with prefect(), Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(job_id, total=None, detail="waiting to start")
        while (now := FineTune.progress(job_id)).status not in ENDED:
            bar.update(task, total=now.total_steps, completed=now.step or 0, detail=_detail(now))
            if deadline is not None and time.monotonic() > deadline:
                raise LoraflowError(f"{job_id} is still {now.status} after {timeout} s")
            time.sleep(FOLLOW_SECONDS)
        _exit_with(FineTune.get(job_id))  # inside: the stack's Prefect API, when it runs


def _detail(now: Any) -> str:
    """loss 1.234, eval 1.300, epoch 1.5, 2m10s left"""
    if now.step is None:
        return now.status.lower()
    parts = [f"loss {now.loss:.3f}" if now.loss is not None else ""]
    parts.append(f"eval {now.eval_loss:.3f}" if now.eval_loss is not None else "")
    parts.append(f"epoch {now.epoch:.2f}" if now.epoch is not None else "")
    if now.eta_seconds is not None:
        minutes, seconds = divmod(int(now.eta_seconds), 60)
        parts.append(f"{minutes}m{seconds:02d}s left")
    return ", ".join(p for p in parts if p)


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
