"""Read a CSV or JSONL file into a frame of strings, keeping each row's line in the file.

One reader for every file loraflow takes: training datasets (``TRAINING``: prompt/response
pairs or chats ending with the answer) and batch inputs (``PROMPTS``: prompts or chats ending
with the user's turn). Problems found while reading (encoding, quoting, columns, JSON, chat
structure) go into the report; rows that cannot be read are left out of the frame so the
value checks can still run.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from loraflow.chat import chat_problem
from loraflow.data.report import ValidationReport

Format = Literal["csv", "jsonl"]
SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Layout:
    """What each row holds: one of ``column_sets`` (the first set's names are the frame's), or
    chat ``messages`` ending with ``chat_ends_with``'s turn (the assistant's answer to learn
    from, or the user's turn to answer)."""

    column_sets: tuple[tuple[str, ...], ...]
    chat_ends_with: Literal["assistant", "user"]

    @property
    def names(self) -> tuple[str, ...]:
        return self.column_sets[0]

    def wanted(self) -> str:
        """The columns this layout accepts, in words."""
        sets = [" and ".join(s) for s in self.column_sets]
        return f"{sets[0]} (or {', or '.join([*sets[1:], 'messages'])})"


TRAINING = Layout((("prompt", "response"), ("input", "output")), "assistant")
PROMPTS = Layout((("prompt",),), "user")
_SIGNATURES = {
    b"PK\x03\x04": "a ZIP archive (an Excel workbook?)",
    b"PAR1": "a Parquet file",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\x1f\x8b": "a gzip archive",
}
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class Table:
    """Normalised rows (prompt, response and, for chat rows, messages) and their file lines.

    ``records`` counts the data records in the file, including ones that could not be read.
    """

    frame: pl.DataFrame
    line_of: Callable[[pl.Series], pl.Series]
    records: int


def detect_format(name: str, head: bytes, report: ValidationReport) -> Format | None:
    """The dataset format from the file name, else from its first bytes; None if neither."""
    for magic, what in _SIGNATURES.items():
        if head.startswith(magic):
            report.add("format", f"this is {what}, not a CSV or JSONL file")
            return None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        report.add("encoding", "this file is UTF-16 (it starts with a UTF-16 byte-order mark)")
        return None
    if b"\x00" in head:
        at = head.index(b"\x00")
        if head[1::2].count(0) > len(head) // 4 or head[::2].count(0) > len(head) // 4:
            report.add("encoding", "this file looks like UTF-16 text (every other byte is 0)")
            return None
        report.add(
            "format",
            f"a NUL byte at offset {at}: a binary or damaged file, not a CSV or JSONL file",
            line=head.count(b"\n", 0, at) + 1,
        )
        return None
    suffix = Path(name).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]  # type: ignore[return-value]
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def read_table(
    data: bytes | Path, name: str, report: ValidationReport, layout: Layout, max_chars: int | None
) -> Table | None:
    """Read CSV or JSONL (told apart by name, else by the first bytes) in ``layout``."""
    if isinstance(data, Path):
        with data.open("rb") as stream:
            head = stream.read(SNIFF_BYTES)
    else:
        head = data[:SNIFF_BYTES]
    report.format = detect_format(name, head, report)
    if report.format == "csv":
        return read_csv(data, report, layout, max_chars)
    if report.format == "jsonl":
        return read_jsonl(data, report, layout, max_chars)
    return None


def find_bad_utf8(data: bytes, report: ValidationReport, limit: int = 100) -> bool:
    """Report each line holding bytes that are not UTF-8; True if there were any."""
    positions: list[tuple[int, int]] = []

    def record(exc: UnicodeError) -> tuple[str, int]:
        assert isinstance(exc, UnicodeDecodeError)
        positions.append((exc.start, exc.end))
        return "", exc.end

    handler = f"loraflow-record-{id(positions)}"
    codecs.register_error(handler, record)
    data.decode("utf-8", errors=handler)
    lines_seen: set[int] = set()
    for start, end in positions:
        line = data.count(b"\n", 0, start) + 1
        if line not in lines_seen and len(lines_seen) < limit:
            lines_seen.add(line)
            report.add(
                "encoding", f"bytes {data[start:end]!r} at offset {start} are not UTF-8", line=line
            )
    return bool(positions)


def pick_columns(
    names: list[str], report: ValidationReport, layout: Layout
) -> dict[str, str] | None:
    """Map the file's headers to the layout's names (and ``messages``); report a missing
    column set or extra columns."""
    lowered = {name.strip().lower(): name for name in names}
    mapping = {lowered["messages"]: "messages"} if "messages" in lowered else {}
    for wanted in layout.column_sets:
        if all(w in lowered for w in wanted):
            mapping |= {lowered[w]: canon for w, canon in zip(wanted, layout.names, strict=True)}
            break
    if not mapping:
        report.add("columns", f"the header needs {layout.wanted()}; it has {names!r}")
        return None
    extra = [n for n in names if n not in mapping]
    if extra:
        report.add(
            "columns", f"extra columns ignored: {', '.join(map(repr, extra))}", severity="warning"
        )
    return mapping


def read_csv(
    data: bytes | Path,
    report: ValidationReport,
    layout: Layout = TRAINING,
    max_chars: int | None = None,
) -> Table | None:
    """Read a CSV of strings with polars; on a parse error find the line with Python's csv.

    A ``messages`` column holds a chat as JSON; a row with one takes its other values from it.
    """
    try:
        raw = pl.read_csv(data, infer_schema=False, raise_if_empty=False)
    except pl.exceptions.ComputeError as exc:
        blob = data.read_bytes() if isinstance(data, Path) else data
        if "utf-8" in str(exc) and find_bad_utf8(blob, report):
            return None
        diagnose_csv(blob, str(exc), report)
        return None
    report.columns = raw.columns
    if not raw.columns or raw.columns == [""]:
        report.add("format", "the file is empty: it needs a header row and data rows")
        return None
    doubled = [c for c in raw.columns if "_duplicated_" in c]
    if doubled:
        report.add("columns", f"the header names a column twice: {doubled!r}")
        return None
    mapping = pick_columns(raw.columns, report, layout)
    if mapping is None:
        return None
    frame = raw.select(
        *(pl.col(src).alias(dst) for src, dst in mapping.items()),
        *(pl.lit(None, pl.String).alias(n) for n in layout.names if n not in mapping.values()),
        _all_null=pl.all_horizontal(pl.all().is_null()),
    )
    frame = _drop_trailing_empty(frame)
    kept: pl.Series | None = None

    @functools.cache
    def first_lines() -> pl.Series:
        # A record spans one line plus the newlines inside its quoted fields (in any column);
        # computed only when a problem needs its line.
        spans = (
            raw.head(len(frame))
            .select(
                pl.sum_horizontal(
                    pl.col(c).str.count_matches("\n", literal=True).fill_null(0)
                    for c in raw.columns
                )
                + 1
            )
            .to_series()
        )
        header_lines = 1 + sum(c.count("\n") for c in raw.columns)
        return spans.cum_sum() - spans + header_lines + 1

    def line_of(rows: pl.Series) -> pl.Series:
        return first_lines().gather(rows if kept is None else kept.gather(rows))

    records = len(frame)
    if "messages" in frame.columns:
        frame, kept = _read_chats(frame, line_of, report, layout, max_chars)
    return Table(frame=frame, line_of=line_of, records=records)


def _read_chats(
    frame: pl.DataFrame,
    line_of: Callable[[pl.Series], pl.Series],
    report: ValidationReport,
    layout: Layout,
    max_chars: int | None,
) -> tuple[pl.DataFrame, pl.Series | None]:
    """Fill the rows that hold a chat from it; leave out rows whose chat is bad. Returns the
    frame and which of the input rows it kept (None: all)."""
    cells = frame["messages"]
    if cells.null_count() == len(frame):
        return frame.drop("messages"), None  # every row kept, none a chat
    rows = frame.drop("messages").to_dicts()
    out, kept = [], []
    lines = line_of(pl.Series(range(len(frame)), dtype=pl.UInt32)).to_list()
    for i, (row, cell) in enumerate(zip(rows, cells, strict=True)):
        if cell is None:
            out.append({**row, "messages": None})
            kept.append(i)
            continue
        try:
            chat = json.loads(cell)
        except json.JSONDecodeError as exc:
            report.add("messages", f"not valid JSON: {exc.msg}", line=lines[i], column="messages")
            continue
        read = _chat_row(chat, lines[i], report, layout, max_chars)
        if read is not None:
            out.append({**row, **read})
            kept.append(i)
    schema = {c: frame.schema[c] for c in frame.columns}
    return pl.DataFrame(out, schema=schema, orient="row"), pl.Series(kept, dtype=pl.UInt32)


def _drop_trailing_empty(frame: pl.DataFrame) -> pl.DataFrame:
    """Blank lines at the end of a file are not rows."""
    flags = frame["_all_null"]
    keep = len(flags)
    while keep and flags[keep - 1]:
        keep -= 1
    return frame.head(keep)


def diagnose_csv(data: bytes, polars_message: str, report: ValidationReport) -> None:
    """Name the lines that break the CSV, after polars refused it."""
    text = data.decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    found = 0
    try:
        header = next(reader, [])
        line = reader.line_num
        for record in reader:
            if record and len(record) != len(header):
                report.add(
                    "parse",
                    f"row has {len(record)} fields but the header has {len(header)}; "
                    "quote values that contain commas",
                    line=line + 1,
                )
                found += 1
            line = reader.line_num
    except csv.Error as exc:
        report.add("parse", f"cannot parse the CSV: {exc}", line=reader.line_num)
        found += 1
    if not found:
        first = polars_message.strip().splitlines()[0]
        report.add("parse", f"cannot parse the file as CSV: {first}")


def read_jsonl(
    data: bytes | Path, report: ValidationReport, layout: Layout, max_chars: int | None
) -> Table | None:
    """Read JSON Lines: one of the layout's key sets, or chat ``messages``, per line."""
    blob = data.read_bytes() if isinstance(data, Path) else data
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError:
        find_bad_utf8(blob, report)
        return None
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    seen_columns: dict[str, None] = {}
    records = 0
    for number, raw_line in enumerate(text.splitlines(), start=1):
        if not raw_line.strip():
            continue
        records += 1
        row = _parse_json_row(raw_line, number, report, seen_columns, layout, max_chars)
        if row is not None:
            rows.append(row)
            lines.append(number)
    report.columns = list(seen_columns)
    known = {"messages", *(name for names in layout.column_sets for name in names)}
    extra = [c for c in seen_columns if c not in known]
    if extra:
        report.add(
            "columns", f"extra keys ignored: {', '.join(map(repr, extra))}", severity="warning"
        )
    schema = dict.fromkeys([*layout.names, "messages"], pl.String)
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    if frame["messages"].null_count() == len(frame):
        frame = frame.drop("messages")
    frame = frame.with_columns(_all_null=pl.lit(False))
    line_series = pl.Series("line", lines, dtype=pl.Int64)
    return Table(frame=frame, line_of=lambda rows_: line_series.gather(rows_), records=records)


def _parse_json_row(
    line: str,
    number: int,
    report: ValidationReport,
    seen: dict[str, None],
    layout: Layout,
    max_chars: int | None,
) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        report.add("json", f"not valid JSON: {exc.msg} (character {exc.pos + 1})", line=number)
        return None
    if not isinstance(obj, dict):
        report.add("json", f"expected a JSON object, got {type(obj).__name__}", line=number)
        return None
    seen.update(dict.fromkeys(obj))
    if "messages" in obj:
        return _chat_row(obj["messages"], number, report, layout, max_chars)
    for wanted in layout.column_sets:
        if all(w in obj for w in wanted):
            values = [obj[w] for w in wanted]
            for key, value in zip(wanted, values, strict=True):
                if value is not None and not isinstance(value, str):
                    report.add(
                        "json",
                        f"must be a string, not {type(value).__name__}",
                        line=number,
                        column=key,
                        value=value,
                    )
                    return None
            return {**dict(zip(layout.names, values, strict=True)), "messages": None}
    report.add("columns", f"needs keys {layout.wanted()}; has {list(obj)!r}", line=number)
    return None


def _chat_row(
    messages: Any, number: int, report: ValidationReport, layout: Layout, max_chars: int | None
) -> dict[str, Any] | None:
    """Check one OpenAI-style conversation: its last user turn is the prompt and, in a
    training layout, its last (assistant) turn is the response."""
    problem = chat_problem(messages, ends_with=layout.chat_ends_with, max_chars=max_chars)
    if problem:
        report.add("messages", problem, line=number, column="messages")
        return None
    row = dict.fromkeys(layout.names)
    row["prompt"] = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if "response" in row:
        row["response"] = messages[-1]["content"]
    return {**row, "messages": json.dumps(messages, ensure_ascii=False)}
