"""The command line's shared parts: the app, consoles, error handling, report printing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

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


def prefect() -> Any:
    """Within this block, Prefect talks to the API loraflow's settings name."""
    from loraflow.jobs import prefect_api

    return prefect_api()
