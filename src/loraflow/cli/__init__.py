"""The library's command line: a client of the SDK. Imports stay light: heavy modules load
inside commands. The ``loraflow`` console script adds the ops commands (``deployments.cli``)."""

from __future__ import annotations

from loraflow.cli import data, jobs, serving  # noqa: F401 (they register commands)
from loraflow.cli._app import ID_COLUMN, app

__all__ = ["ID_COLUMN", "app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
