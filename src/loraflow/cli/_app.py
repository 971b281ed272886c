"""The command line's shared parts: the app, consoles, error handling, report printing."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from loraflow.errors import DataValidationError, LoraflowError, redact

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


class _Options:
    debug = False


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", envvar="LORAFLOW_DEBUG", help="On an error, show its traceback too."
    ),
) -> None:
    """Self-hosted LoRA fine-tuning and completion, orchestrated by Prefect."""
    _Options.debug = debug


def handle_errors(func: F) -> F:
    """End a command that fails in one line on stderr (exit code 1): loraflow's errors with
    their message, any other with its type and first line; ``--debug`` adds the traceback.
    Credentials in URLs are masked either way."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DataValidationError as exc:
            print_report(exc.report, limit=50, console=err)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _Options.debug:
                err.print(redact(traceback.format_exc()), highlight=False, markup=False)
            err.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _one_line(exc: Exception) -> str:
    text = redact(str(exc)).strip()
    if isinstance(exc, LoraflowError):
        return text
    first = text.splitlines()[0] if text else ""
    hint = "" if _Options.debug else " (--debug shows the traceback)"
    return f"{type(exc).__name__}: {first}{hint}"


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
