"""The ``loraflow`` command: the library's client commands plus the ops edge.

The library's CLI (``loraflow.cli``: files, fine-tunes, models, complete, batch, serve) is a
client of the SDK. Here, at the edge, it gains the commands that run loraflow's own machinery:
the local stack (``up``, ``down``, ``status``), ``deploy``, ``worker``, ``retrain``,
``promote`` and ``demo``. The ``loraflow`` console script is ``main`` below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from loraflow.cli import app
from loraflow.cli._app import err, handle_errors, out, prefect


@app.command()
@handle_errors
def up(
    deploy: Annotated[
        bool, typer.Option(help="Apply configs/deployments.yaml once Prefect is up.")
    ] = True,
) -> None:
    """Start the local stack on 127.0.0.1: Prefect server and worker, MLflow UI, loraflow serve.

    Idempotent: what already runs is left alone. Logs and PID files: <home>/stack/.
    """
    stack = _stack()
    new_key = not stack.settings.api_keys and not (stack.dir / "api-key").exists()
    stack.up(_say, deploy=(lambda: _apply(stack.api_url)) if deploy else None)
    if not stack.settings.api_keys:
        key = stack.api_key()
        shown = f"{key} (shown once; " if new_key else "("
        out.print(f"HTTP API key: {shown}kept in {stack.dir / 'api-key'})", highlight=False)
    out.print(
        f"Prefect UI {stack.api_url.removesuffix('/api')}; loraflow commands here use this "
        f"stack. Logs: {stack.dir}. Stop it with `loraflow down`.",
        highlight=False,
    )


@app.command()
@handle_errors
def down() -> None:
    """Stop the services `loraflow up` started (nothing else)."""
    _stack().down(_say)


@app.command()
@handle_errors
def status() -> None:
    """Show the stack's services; exit 1 unless every one is running and healthy."""
    table = Table("service", "state", "pid", "url", "log")
    found = _stack().status()
    for s in found:
        state = "[green]healthy[/green]" if s.healthy else "[yellow]unhealthy[/yellow]"
        table.add_row(
            s.name,
            state if s.running else "[red]stopped[/red]",
            str(s.pid or ""),
            s.url or "",
            str(s.log),
        )
    out.print(table)
    if not all(s.healthy for s in found):
        raise typer.Exit(1)


@app.command()
@handle_errors
def deploy(
    config: Annotated[
        Path | None, typer.Option(help="Deployments file (default configs/deployments.yaml).")
    ] = None,
) -> None:
    """Apply loraflow's deployments, work pool and device concurrency limit to Prefect."""
    from deployments.build import apply

    with prefect():
        _print_applied(apply(config))


@app.command()
@handle_errors
def retrain(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="file-… id, path (uploaded first), s3://… key or prefix/, builtin:<name>; "
            "unset: the deployment's."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Retrain even if the data is unchanged.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the outcome; exit code tells it.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this.")] = None,
    local: Annotated[
        bool, typer.Option(help="Run in this process (no server or worker needed).")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="RetrainConfig YAML for --local (configs/retrain.yaml).")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="KEY=VALUE over the config, e.g. gate.min_improvement=0.05; repeatable."
        ),
    ] = None,
) -> None:
    """Run the retrain pipeline: on the Prefect server's worker, or --local.

    With --wait (always with --local) the exit code is 0 when a model was promoted or nothing
    changed, 3 when the candidate failed the promotion gate, 1 when the run failed.
    """
    from loraflow import jobs
    from loraflow.retraining import check_config, merge, overrides_from

    overrides = overrides_from(assignments or []) | ({"force": True} if force else {})
    if local:
        from loraflow.settings import read_yaml

        path = config or _default_retrain_config()
        base = merge(read_yaml(path) if path else {}, overrides)
        run_local(check_config(base | _dataset(dataset, upload=False)))
        return
    from loraflow import retraining

    with prefect():
        run = retraining.start(overrides | _dataset(dataset, upload=True))
        out.print(f"retrain run {run.name} ({run.id}): {_ui(run.id)}", highlight=False)
        if not wait:
            return
        try:
            run = jobs.wait_run(run.id, timeout)
        except jobs.JobTimeoutError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
    _exit_with(run.name, run.state.name, run.state.type.value, run.state.message)


def run_local(config: Any) -> None:
    from flows.retrain import retrain as retrain_flow

    with prefect():
        state = retrain_flow(config, return_state=True)
    _exit_with("(local)", state.name, state.type.value, state.message)


def _exit_with(run: str, name: str | None, kind: str, message: str | None) -> None:
    from loraflow.retraining import exit_code

    code = exit_code(name, kind)
    if kind == "COMPLETED":
        out.print(f"{(name or '').lower()}: {message or ''}", highlight=False, markup=False)
    else:
        err.print(f"retrain run {run} {name}: {message or ''}", highlight=False, markup=False)
    raise typer.Exit(code)


def _dataset(dataset: str | None, upload: bool) -> dict[str, str]:
    """The dataset override; a local file goes to storage first when a worker will read it."""
    if dataset is None:
        return {}
    path = Path(dataset).expanduser()
    if upload and path.is_file():
        from loraflow import File

        file_id = File.upload(path).id
        out.print(f"uploaded {dataset} as {file_id}", highlight=False)
        return {"dataset": file_id}
    return {"dataset": dataset}


def _default_retrain_config() -> Path | None:
    path = Path("configs/retrain.yaml")
    return path if path.is_file() else None


def _apply(api_url: str) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.build import apply

    with temporary_settings({PREFECT_API_URL: api_url}):
        _print_applied(apply())


def _print_applied(names: list[str]) -> None:
    from deployments.build import live_schedules

    out.print("deployments: " + ", ".join(names), highlight=False)
    for line in live_schedules():
        out.print(line, highlight=False, markup=False)


def _ui(flow_run_id: Any) -> str:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base}/runs/flow-run/{flow_run_id}" if base else str(flow_run_id)


def _stack() -> Any:
    """This home's stack, its worker serving the work pool configs/deployments.yaml names."""
    from deployments.build import load
    from deployments.stack import Stack

    return Stack(pool=load().work_pool)


def _say(line: str) -> None:
    out.print(line, highlight=False)


@app.command()
@handle_errors
def worker(
    limit: Annotated[int, typer.Option(help="Flow runs at once.")] = 1,
    poll: Annotated[float, typer.Option(help="Seconds between polls for new runs.")] = 2.0,
) -> None:
    """Serve loraflow's deployments here: runs fine-tunes that FineTune.create starts."""
    from deployments.local import serve

    with prefect():
        serve(limit=limit, poll_seconds=poll)


@app.command()
@handle_errors
def demo() -> None:
    """Run the pipeline on the bundled dataset with the embedded defaults."""
    from deployments.demo import run

    run(out)


@app.command()
@handle_errors
def promote(
    model: Annotated[str, typer.Argument(help="Candidate: fine-tune name or NAME/VERSION.")],
    validation_file: Annotated[str, typer.Option(help="file-… id of rows to score on.")],
    metric: Annotated[str, typer.Option(help="eval_loss, exact_match or rouge_l.")] = "eval_loss",
    min_improvement: Annotated[float, typer.Option(help="Margin to win by.")] = 0.0,
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
) -> None:
    """Score a fine-tune beside the champion and move the alias if it wins (a flow run)."""
    from pydantic import ValidationError

    from flows.promote import PromoteConfig, promote
    from loraflow.errors import InvalidRequestError, first_problem

    try:
        config = PromoteConfig(
            model=model,
            validation_file=validation_file,
            metric=metric,  # type: ignore[arg-type]
            min_improvement=min_improvement,
            alias=alias,
        )
    except ValidationError as exc:
        raise InvalidRequestError(first_problem(exc)) from None
    with prefect():
        decision = promote(config)
    out.print(decision.to_markdown(), highlight=False, markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
