"""The loraflow command line: validate and files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from loraflow.cli import app
from tests.helpers import csv_rows, write

runner = CliRunner()


def test_validate_lists_every_bad_row(tmp_path: Path) -> None:
    body = "prompt,response\n" + "".join(
        f"q{i},\n" if i % 3 == 0 else f"q{i},a{i}\n" for i in range(30)
    )
    result = runner.invoke(app, ["validate", str(write(tmp_path, "broken.csv", body))])
    assert result.exit_code == 1
    assert "not valid" in result.output
    for i in range(0, 30, 3):
        assert f"│ {i + 2} " in result.output  # each bad row's line number
    assert "not_null 10" in result.output


def test_validate_valid_file_exits_zero(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(write(tmp_path, "ok.csv", csv_rows(200)))])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "200 rows" in result.output


def test_validate_json_and_limits(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "prompt,response\na,b\na,b\n")
    result = runner.invoke(app, ["validate", str(path), "--json", "--duplicates", "error"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["summary"]["counts"] == {"min_rows": 1, "duplicate": 1}
    assert payload["issues"][-1]["line"] == 3


def test_validate_limit_caps_printed_rows(tmp_path: Path) -> None:
    body = "prompt,response\n" + "x,\n" * 80
    result = runner.invoke(app, ["validate", str(write(tmp_path, "b.csv", body)), "--limit", "5"])
    assert "more (use --limit 0 to show all)" in result.output


def test_files_commands(tmp_path: Path) -> None:
    path = write(tmp_path, "train.csv", csv_rows(5))
    uploaded = runner.invoke(app, ["files", "upload", str(path)])
    assert uploaded.exit_code == 0, uploaded.output
    file_id = uploaded.output.strip()
    assert file_id.startswith("file-")

    assert file_id in runner.invoke(app, ["files", "list"]).output
    got = json.loads(runner.invoke(app, ["files", "get", file_id]).output)
    assert got["rows"] == 5 and got["filename"] == "train.csv"
    assert runner.invoke(app, ["files", "download", file_id]).stdout == csv_rows(5)
    out = tmp_path / "copy.csv"
    assert runner.invoke(app, ["files", "download", file_id, "-o", str(out)]).exit_code == 0
    assert out.read_text() == csv_rows(5)
    assert "deleted" in runner.invoke(app, ["files", "delete", file_id]).output

    missing = runner.invoke(app, ["files", "get", file_id])
    assert missing.exit_code == 1 and "could not be found" in missing.output


def test_files_upload_of_invalid_data_shows_report(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["files", "upload", str(write(tmp_path, "b.csv", "prompt,response\n,x\n"))]
    )
    assert result.exit_code == 1
    assert "not valid" in result.output
    assert runner.invoke(app, ["files", "list"]).output.count("file-") == 0


def test_complete_streams_the_same_text_the_sdk_returns() -> None:
    from loraflow import Completion

    args = ["complete", "tiny-llama-test", "Where is my order?", "--max-new-tokens", "8"]
    result = runner.invoke(app, [*args, "--temperature", "0.9", "--seed", "4"])
    assert result.exit_code == 0, result.output
    expected = Completion.create("tiny-llama-test", "Where is my order?", 8, 0.9, seed=4)
    assert result.stdout == expected.output.text + "\n"
    bad = runner.invoke(app, [*args, "--temperature", "2"])
    assert bad.exit_code == 1 and "temperature" in bad.stderr


def test_models_list_get_and_refusals() -> None:
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "tiny-llama-test" in listed.stdout
    shown = runner.invoke(app, ["models", "get", "tiny-llama-test"])
    assert json.loads(shown.stdout)["fine_tuned"] is False
    for args in (["models", "delete", "tiny-llama-test"], ["models", "get", "no-such.model"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "error:" in result.stderr
