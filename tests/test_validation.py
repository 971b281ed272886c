"""Every validation rule with its bad input, and the valid variants of the formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.data import validate
from loraflow.data.report import PREVIEW_CHARS
from loraflow.settings import ValidationConfig
from tests.helpers import csv_rows, write

LOOSE = ValidationConfig(recommended_min_rows=0)


def problems(report, severity="error"):
    return [
        (i["line"], i["column"], i["check"]) for i in report.issues if i["severity"] == severity
    ]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("plain.csv", "prompt,response\nhi,hello\nbye,ciao\n"),
        ("bom.csv", "\ufeffprompt,response\nhi,hello\nbye,ciao\n"),
        ("crlf.csv", "prompt,response\r\nhi,hello\r\nbye,ciao\r\n"),
        ("quoted.csv", 'prompt,response\n"hi, there","line one\nline two"\nbye,ciao\n'),
        ("io.csv", "input,output\nhi,hello\nbye,ciao\n"),
        ("upper.csv", "Prompt , RESPONSE\nhi,hello\nbye,ciao\n"),
        ("no-final-newline.csv", "prompt,response\nhi,hello\nbye,ciao"),
        ("trailing-blank-lines.csv", "prompt,response\nhi,hello\nbye,ciao\n\n\n"),
        (
            "rows.jsonl",
            '{"prompt": "hi", "response": "hello"}\n\n{"input": "bye", "output": "ciao"}\n',
        ),
        (
            "chat.jsonl",
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "bye"},
                        {"role": "assistant", "content": "ciao"},
                    ]
                }
            )
            + "\n"
            + json.dumps({"prompt": "hi", "response": "hello"})
            + "\n",
        ),
        (
            "no-extension",
            '{"prompt": "hi", "response": "hello"}\n{"prompt": "a", "response": "b"}\n',
        ),
    ],
)
def test_valid_variants(tmp_path: Path, name: str, data: str) -> None:
    dataset = validate(write(tmp_path, name, data), config=LOOSE)
    assert dataset.report.valid, dataset.report.describe()
    assert dataset.report.issues == []
    assert len(dataset.frame) == 2
    assert set(dataset.frame.columns) >= {"prompt", "response"}


def test_quoted_newlines_and_crlf_keep_values(tmp_path: Path) -> None:
    data = 'prompt,response\r\n"a, b","one\r\ntwo"\r\nc,d\r\n'
    frame = validate(write(tmp_path, "q.csv", data), config=LOOSE).frame
    assert frame.rows() == [("a, b", "one\r\ntwo"), ("c", "d")]


def test_input_output_are_normalised(tmp_path: Path) -> None:
    frame = validate(write(tmp_path, "io.csv", "input,output\nq,a\n"), config=LOOSE).frame
    assert frame.columns == ["prompt", "response"]


def test_chat_rows_keep_history(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "two"},
    ]
    path = write(tmp_path, "c.jsonl", json.dumps({"messages": messages}) + "\n")
    frame = validate(path, config=LOOSE).frame
    assert frame["prompt"][0] == "second"
    assert frame["response"][0] == "two"
    assert json.loads(frame["messages"][0]) == messages


def test_a_csv_messages_column_holds_chats_read_like_jsonl(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    cell = '"' + json.dumps(chat).replace('"', '""') + '"'
    body = (
        "prompt,response,messages\n"
        f"a,b,\n,,{cell}\n,,not json\n"
        ',,"[{""role"": ""user"", ""content"": ""no answer""}]"\nc,d,\n'
    )
    dataset = validate(write(tmp_path, "chats.csv", body), config=LOOSE)
    assert problems(dataset.report) == [(4, "messages", "messages"), (5, "messages", "messages")]
    assert "not valid JSON" in dataset.report.errors[0]["message"]
    assert "messages[0].role: the last turn must be" in dataset.report.errors[1]["message"]
    frame = dataset.frame  # the bad chats are left out; the rest keep their order
    assert frame["prompt"].to_list() == ["a", "hi", "c"]
    assert frame["response"].to_list() == ["b", "hello", "d"]
    assert json.loads(frame["messages"][1]) == chat


def test_every_failure_reported_at_once_with_file_lines(tmp_path: Path) -> None:
    data = (
        "prompt,response\n"  # line 1
        "ok,fine\n"  # 2
        ",missing prompt\n"  # 3
        '"multi\nline prompt",\n'  # 4-5: response missing, reported at line 4
        "   ,blank prompt\n"  # 6
        "\n"  # 7: empty row in the middle
        "ok,fine\n"  # 8: duplicate of line 2
        f"long,{'x' * 120}\n"  # 9
    )
    report = validate(
        write(tmp_path, "bad.csv", data), config=LOOSE.model_copy(update={"max_field_chars": 100})
    ).report
    assert not report.valid
    assert problems(report) == [
        (3, "prompt", "not_null"),
        (4, "response", "not_null"),
        (6, "prompt", "not_blank"),
        (7, None, "empty_row"),
        (9, "response", "max_length"),
    ]
    assert problems(report, "warning") == [(8, None, "duplicate")]
    assert report.counts() == {
        "not_null": 2,
        "not_blank": 1,
        "empty_row": 1,
        "duplicate": 1,
        "max_length": 1,
    }
    duplicate = next(i for i in report.issues if i["check"] == "duplicate")
    assert "line 2" in duplicate["message"]


def test_duplicates_can_be_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "prompt,response\na,b\nc,d\na,b\na,b\n")
    warn = validate(path, config=LOOSE).report
    assert warn.valid and problems(warn, "warning") == [
        (4, None, "duplicate"),
        (5, None, "duplicate"),
    ]
    strict = validate(path, config=LOOSE.model_copy(update={"duplicates": "error"})).report
    assert not strict.valid and problems(strict) == [(4, None, "duplicate"), (5, None, "duplicate")]


def test_same_prompt_different_response_is_not_a_duplicate(tmp_path: Path) -> None:
    report = validate(
        write(tmp_path, "d.csv", "prompt,response\na,b\na,c\nb,a\n"), config=LOOSE
    ).report
    assert report.issues == []


def test_huge_cells_are_previewed_not_printed(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", f"prompt,response\nq,{'y' * 50_000}\n")
    report = validate(path, config=LOOSE.model_copy(update={"max_field_chars": 1000})).report
    (issue,) = report.errors
    assert issue["check"] == "max_length"
    assert len(issue["value"]) < PREVIEW_CHARS + 30
    assert "50,000 chars" in issue["value"]
    assert len(report.describe()) < 1000


def test_max_length_counts_characters_not_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "u.csv", f"prompt,response\nq,{'é' * 10}\n")
    assert validate(path, config=LOOSE.model_copy(update={"max_field_chars": 10})).report.valid
    assert not validate(path, config=LOOSE.model_copy(update={"max_field_chars": 9})).report.valid


def test_row_limits(tmp_path: Path) -> None:
    few = validate(write(tmp_path, "few.csv", csv_rows(3)))
    assert few.report.valid and problems(few.report, "warning") == [(None, None, "min_rows")]
    none = validate(write(tmp_path, "none.csv", "prompt,response\n"))
    assert problems(none.report) == [(None, None, "min_rows")]
    many = validate(
        write(tmp_path, "many.csv", csv_rows(11)), config=LOOSE.model_copy(update={"max_rows": 10})
    )
    assert problems(many.report) == [(None, None, "max_rows")]
    assert "11 rows; the maximum is 10" in many.report.describe()


def test_non_utf8_bytes_are_rejected_with_their_lines(tmp_path: Path) -> None:
    data = b"prompt,response\nok,fine\ncaf\xe9,latin-1\nok2,fine\nbad,\xff\xfe\n"
    report = validate(write(tmp_path, "latin.csv", data)).report
    assert [(i["line"], i["check"]) for i in report.errors] == [(3, "encoding"), (5, "encoding")]
    assert "save the file as UTF-8" in report.describe()


def test_a_nul_byte_is_reported_at_its_line(tmp_path: Path) -> None:
    report = validate(write(tmp_path, "nul.csv", b"prompt,response\na,b\nc\x00,d\n")).report
    (issue,) = report.errors
    assert issue["line"] == 3 and "NUL" in issue["message"]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("huge.jsonl", '{"prompt": "' + "x" * 5_000_000 + '", "response": oops}\n'),
        ("header.csv", "x" * 5_000_000),  # a header of one huge column, no newline
        ("fields.csv", "prompt,response\n" + "x," * 2_000_000),
    ],
)
def test_a_huge_single_line_is_reported_in_a_few_bytes(
    tmp_path: Path, name: str, line: str
) -> None:
    report = validate(write(tmp_path, name, line)).report
    assert not report.valid
    whole = {"summary": report.summary().model_dump(), "issues": report.issues}
    assert len(json.dumps(whole)) < 2_000


def test_non_utf8_jsonl(tmp_path: Path) -> None:
    data = b'{"prompt": "a", "response": "b"}\n{"prompt": "\xe9", "response": "b"}\n'
    report = validate(write(tmp_path, "latin.jsonl", data)).report
    assert [(i["line"], i["check"]) for i in report.errors] == [(2, "encoding")]


@pytest.mark.parametrize(
    ("name", "data", "phrase"),
    [
        ("book.xlsx", b"PK\x03\x04rest-of-zip", "ZIP archive"),
        ("data.csv", b"PAR1\x00\x00", "Parquet"),
        ("blob.csv", b"prompt,response\nabc\x00def\n", "a NUL byte at offset 19"),
        ("utf16.csv", "prompt,response\nhi,there\n".encode("utf-16"), "UTF-16"),
        ("utf16le.csv", "prompt,response\nhi,there\n".encode("utf-16-le"), "looks like UTF-16"),
        ("empty.csv", b"", "empty"),
    ],
)
def test_not_csv_or_jsonl(tmp_path: Path, name: str, data: bytes, phrase: str) -> None:
    report = validate(write(tmp_path, name, data)).report
    assert not report.valid
    assert phrase in report.errors[0]["message"]


def test_missing_columns_name_what_was_found(tmp_path: Path) -> None:
    report = validate(write(tmp_path, "qa.csv", "question,answer\na,b\n")).report
    (issue,) = report.errors
    assert issue["check"] == "columns"
    assert "['question', 'answer']" in issue["message"]
    assert "prompt" in issue["message"]


def test_extra_columns_are_ignored_with_a_warning(tmp_path: Path) -> None:
    dataset = validate(write(tmp_path, "x.csv", "id,prompt,response\n1,a,b\n"), config=LOOSE)
    assert dataset.report.valid
    assert dataset.frame.columns == ["prompt", "response"]
    (warning,) = dataset.report.warnings
    assert "'id'" in warning["message"]


def test_ragged_rows_are_located(tmp_path: Path) -> None:
    report = validate(write(tmp_path, "r.csv", "prompt,response\na,b\nc,d,e\nf,g\n")).report
    assert [(i["line"], i["check"]) for i in report.errors] == [(3, "parse")]
    assert "quote values that contain commas" in report.errors[0]["message"]


def test_jsonl_structure_errors(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "a", "response": "b"}',
        "not json",
        "[1, 2]",
        '{"question": "a"}',
        '{"prompt": 3, "response": "b"}',
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
        '{"messages": []}',
        '{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}',
    ]
    report = validate(write(tmp_path, "s.jsonl", "\n".join(lines) + "\n"), config=LOOSE).report
    assert [(i["line"], i["check"]) for i in report.errors] == [
        (2, "json"),
        (3, "json"),
        (4, "columns"),
        (5, "json"),
        (6, "messages"),
        (7, "messages"),
        (8, "messages"),
        (9, "messages"),
    ]
    assert report.rows == 9


def test_jsonl_values_are_checked_like_csv(tmp_path: Path) -> None:
    lines = ['{"prompt": "a", "response": "  "}', '{"prompt": null, "response": "b"}']
    report = validate(write(tmp_path, "v.jsonl", "\n".join(lines)), config=LOOSE).report
    assert problems(report) == [(1, "response", "not_blank"), (2, "prompt", "not_null")]


def test_chat_message_length_is_limited(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "ok"}]
    path = write(tmp_path, "c.jsonl", json.dumps({"messages": messages}))
    report = validate(path, config=LOOSE.model_copy(update={"max_field_chars": 10})).report
    assert problems(report) == [(1, "messages", "messages")]


def test_bytes_source_and_report_rendering(tmp_path: Path) -> None:
    report = validate(b"prompt,response\n,x\n", name="upload.csv").report
    assert report.source == "upload.csv"
    text = report.describe()
    assert "upload.csv is not valid" in text and "line 2, column prompt" in text
    assert "| line |" not in text and "| severity | line |" in report.to_markdown()
    assert report.summary().model_dump()["counts"] == {"not_null": 1, "min_rows": 1}
