"""Where datasets come from: local paths and the datasets bundled with loraflow."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from loraflow.errors import NotFoundError

BUILTIN = "builtin:"


def builtin_names() -> list[str]:
    """Names of the bundled datasets, e.g. ``customer_support.csv``."""
    folder = resources.files("loraflow") / "datasets"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".csv", ".jsonl")))


def resolve_source(source: str) -> Path:
    """A local path for ``source``: a file path, or ``builtin:<name>`` for a bundled dataset."""
    if source.startswith(BUILTIN):
        name = source.removeprefix(BUILTIN)
        if name not in builtin_names():
            raise NotFoundError(
                f"no bundled dataset {name!r}; bundled: {', '.join(builtin_names())}"
            )
        return Path(str(resources.files("loraflow") / "datasets" / name))
    path = Path(source).expanduser()
    if not path.is_file():
        raise NotFoundError(f"dataset {source!r} not found: give a path to a CSV or JSONL file")
    return path
