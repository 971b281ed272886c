"""Validate a prompt/response dataset with pandera's polars backend, reporting every failure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from loraflow.data.readers import TRAINING, Table, read_table
from loraflow.data.report import Severity, ValidationReport
from loraflow.errors import DataValidationError
from loraflow.settings import ValidationConfig

_MESSAGES = {
    "not_nullable": ("not_null", "value is missing"),
    "not_blank": ("not_blank", "value is blank"),
    "max_length": ("max_length", "longer than {max:,} characters ({length:,})"),
    "duplicate": ("duplicate", "same prompt and response as line {first}"),
    "not_empty_row": ("empty_row", "empty row (a blank line or only commas)"),
}


@dataclass
class Dataset:
    """A validated dataset: normalised rows and the report on them."""

    frame: pl.DataFrame
    report: ValidationReport

    def raise_for_errors(self) -> Dataset:
        """Return self if valid, else raise DataValidationError carrying the report."""
        if not self.report.valid:
            raise DataValidationError(self.report)
        return self


def schema(config: ValidationConfig) -> Any:
    """The pandera schema of a normalised dataset, with ``config``'s limits."""
    import pandera.polars as pa

    def not_blank(data: Any) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).str.contains(r"\S"))

    def max_length(data: Any) -> pl.LazyFrame:
        col = pl.col(data.key)  # a byte count at or under the limit needs no char count
        limit = config.max_field_chars
        return data.lazyframe.select(col.str.len_bytes().le(limit) | col.str.len_chars().le(limit))

    def text_column() -> Any:
        return pa.Column(
            pl.String,
            nullable=False,
            checks=[
                pa.Check(not_blank, error="not_blank"),
                pa.Check(max_length, error="max_length"),
            ],
        )

    return pa.DataFrameSchema(
        {"prompt": text_column(), "response": text_column()},
        checks=[
            pa.Check(lambda d: d.lazyframe.select(~pl.col("_all_null")), error="not_empty_row"),
            pa.Check(_first_of_pair, error="duplicate"),
        ],
    )


def _first_of_pair(data: Any) -> pl.LazyFrame:
    """True for the first occurrence of each (prompt, response) pair.

    Pairs are compared by a 64-bit hash here (fast on millions of rows); flagged rows are
    confirmed by exact comparison when the report is built.
    """
    both = pl.col("prompt").is_not_null() & pl.col("response").is_not_null()
    pair = pl.col("prompt").hash(1) ^ pl.col("response").hash(2)
    return data.lazyframe.select(pl.when(both).then(pair.is_first_distinct()).otherwise(True))


def validate(
    source: Path | str | bytes,
    *,
    name: str | None = None,
    config: ValidationConfig | None = None,
) -> Dataset:
    """Read and check a CSV or JSONL dataset; never raises on bad data (see ``raise_for_errors``).

    ``source`` is a path or the file's bytes; ``name`` is what the report calls it.
    """
    config = config or ValidationConfig()
    path = Path(source) if isinstance(source, str) else source
    label = name or (path.name if isinstance(path, Path) else "dataset")
    report = ValidationReport(source=label)
    table = read_table(path, label, report, TRAINING, config.max_field_chars)
    if table is None:
        return Dataset(pl.DataFrame(schema={"prompt": pl.String, "response": pl.String}), report)
    report.rows = table.records
    _check_values(table, report, config)
    _check_counts(report, config)
    report.sort()
    frame = table.frame.drop("_all_null")
    return Dataset(frame, report)


def part_of(dataset: Dataset, frame: pl.DataFrame, name: str, config: ValidationConfig) -> Dataset:
    """A part of a validated dataset (a split) as a dataset of its own, without reading or
    checking its rows again: its report has the row counts checked and nothing else."""
    report = ValidationReport(
        source=name, format=dataset.report.format, rows=len(frame), columns=dataset.report.columns
    )
    _check_counts(report, config)
    return Dataset(frame, report)


def _check_values(table: Table, report: ValidationReport, config: ValidationConfig) -> None:
    from pandera.config import ValidationDepth, config_context
    from pandera.errors import SchemaErrors

    try:
        with config_context(validation_depth=ValidationDepth.SCHEMA_AND_DATA):
            schema(config).validate(table.frame, lazy=True)
        return
    except SchemaErrors as exc:
        failures = exc.failure_cases.select("column", "check", "index").drop_nulls("index")
    frame = table.frame.with_row_index("_row")
    failures = failures.with_columns(line=table.line_of(failures["index"].cast(pl.UInt32)))
    first_line = _first_lines(frame, failures, table)
    empty = set(failures.filter(pl.col("check") == "not_empty_row")["index"].to_list())
    for column, check, index, line in failures.iter_rows():
        name, template = _MESSAGES.get(check, (check, check))
        if index in empty and name != "empty_row":
            continue  # one message for an empty row, not one per column
        severity: Severity = (
            "warning" if name == "duplicate" and config.duplicates == "warn" else "error"
        )
        if name == "duplicate":
            if index not in first_line:
                continue  # a hash collision, not a real duplicate
            message = template.format(first=first_line[index])
            value = frame["prompt"][index]
            column = None
        else:
            value = frame[column][index] if column else None
            length = len(value) if isinstance(value, str) else 0
            message = template.format(max=config.max_field_chars, length=length)
        report.add(name, message, line=line, column=column, value=value, severity=severity)


def _first_lines(frame: pl.DataFrame, failures: pl.DataFrame, table: Table) -> dict[int, int]:
    """For each row flagged as a duplicate, the line of the first row with the same pair."""
    flagged = failures.filter(pl.col("check") == "duplicate")["index"]
    if flagged.is_empty():
        return {}
    pairs = frame.select("_row", "prompt", "response")
    repeats = pairs.filter(pl.col("_row").is_in(flagged.cast(pl.UInt32).implode()))
    firsts = pairs.join(repeats.select("prompt", "response").unique(), on=["prompt", "response"])
    firsts = firsts.group_by("prompt", "response").agg(first=pl.col("_row").min())
    matched = repeats.join(firsts, on=["prompt", "response"]).filter(
        pl.col("_row") != pl.col("first")
    )
    lines = table.line_of(matched["first"])
    return dict(zip(matched["_row"].to_list(), lines.to_list(), strict=True))


def _check_counts(report: ValidationReport, config: ValidationConfig) -> None:
    rows = report.rows
    if rows < max(config.min_rows, 1):
        report.add("min_rows", f"{rows:,} data rows; at least {max(config.min_rows, 1):,} needed")
    elif rows < config.recommended_min_rows:
        report.add(
            "min_rows",
            f"only {rows:,} rows; {config.recommended_min_rows:,} or more are recommended",
            severity="warning",
        )
    if rows > config.max_rows:
        report.add("max_rows", f"{rows:,} rows; the maximum is {config.max_rows:,}")
