"""The validation report: every failing cell or row, with its line in the file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

Severity = Literal["error", "warning"]
PREVIEW_CHARS = 48
MESSAGE_CHARS = 400
ISSUE_COLUMNS = ("severity", "line", "column", "check", "message", "value")

CHECK_HELP = {
    "encoding": "save the file as UTF-8",
    "format": "upload a CSV or JSONL file",
    "parse": "fix the quoting of the row named",
    "columns": "name the columns prompt,response (or input,output)",
    "json": "write one JSON object per line",
    "messages": "use OpenAI chat form: [{role, content}, ...] ending with an assistant message",
    "not_null": "fill in the missing value",
    "empty_row": "remove the empty row",
    "not_blank": "fill in the blank value",
    "max_length": "shorten the value or raise validation.max_field_chars",
    "duplicate": "remove the repeated row",
    "min_rows": "add more rows",
    "max_rows": "split the file or raise validation.max_rows",
}


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str | None:
    """A short one-line rendering of a cell value: never the whole of a huge cell."""
    if value is None:
        return None
    text = str(value)
    shown = text[:limit].replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    if len(text) > limit:
        shown += f"… ({len(text):,} chars)"
    return shown


class ValidationSummary(BaseModel):
    """The small, serialisable part of a report (stored with the file, shown in artifacts)."""

    source: str
    format: str | None
    rows: int
    valid: bool
    errors: int
    warnings: int
    counts: dict[str, int]
    columns: list[str]


@dataclass
class ValidationReport:
    """All problems found in one dataset. ``issues`` holds one dict per problem, in file order."""

    source: str
    format: str | None = None
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        check: str,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
        value: Any = None,
        severity: Severity = "error",
    ) -> None:
        """Record one problem."""
        self.issues.append(
            {
                "severity": severity,
                "line": line,
                "column": preview(column),  # a header can be a whole huge line
                "check": check,
                "message": preview(message, MESSAGE_CHARS),  # a parser may quote a huge line
                "value": preview(value),
            }
        )

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [i for i in self.issues if i["severity"] == "error"]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [i for i in self.issues if i["severity"] == "warning"]

    @property
    def valid(self) -> bool:
        return not self.errors

    def counts(self, severity: Severity | None = None) -> dict[str, int]:
        """Number of problems per check, optionally of one severity."""
        return dict(Counter(i["check"] for i in self.issues if severity in (None, i["severity"])))

    def sort(self) -> None:
        """Order problems by line, file-level ones (no line) first."""
        self.issues.sort(key=lambda i: (i["line"] or 0, i["column"] or ""))

    def summary(self) -> ValidationSummary:
        errors = self.errors
        return ValidationSummary(
            source=self.source,
            format=self.format,
            rows=self.rows,
            valid=not errors,
            errors=len(errors),
            warnings=len(self.issues) - len(errors),
            counts=self.counts(),
            columns=[preview(c) or "" for c in self.columns],
        )

    def describe(self, limit: int = 10) -> str:
        """A plain-text account: the verdict, counts per check, then the first problems."""
        errors = self.errors
        if errors:
            head = f"{self.source} is not valid: {len(errors):,} error(s) in {self.rows:,} rows"
        else:
            head = f"{self.source} is valid: {self.rows:,} rows"
        lines = [head]
        if self.issues:
            lines.append("by check: " + ", ".join(f"{k} {v:,}" for k, v in self.counts().items()))
        shown = (errors or self.warnings)[:limit]
        lines += [format_issue(i) for i in shown]
        if len(self.issues) > len(shown):
            lines.append(f"… and {len(self.issues) - len(shown):,} more")
        if errors:
            fixes = dict.fromkeys(i["check"] for i in errors)
            lines.append("to fix: " + "; ".join(CHECK_HELP.get(c, c) for c in fixes))
        return "\n".join(lines)

    def to_markdown(self, limit: int = 50) -> str:
        """A markdown summary with a table of the first ``limit`` problems."""
        out = [f"### Validation of `{self.source}`", "", self.describe(limit=0), ""]
        if self.issues:
            out += ["| " + " | ".join(ISSUE_COLUMNS) + " |", "|" + "---|" * len(ISSUE_COLUMNS)]
            for issue in self.issues[:limit]:
                cells = ("" if issue[c] is None else str(issue[c]) for c in ISSUE_COLUMNS)
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(out)


def format_issue(issue: dict[str, Any]) -> str:
    where = f"line {issue['line']}" if issue["line"] else "file"
    if issue["column"]:
        where += f", column {issue['column']}"
    text = f"  {issue['severity']}: {where}: {issue['message']} [{issue['check']}]"
    if issue["value"] is not None:
        text += f": {issue['value']!r}"
    return text
