"""The ``complete`` task inside a flow, and the batch flow end to end, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from prefect import flow

from flows.batch_complete import batch_complete
from loraflow import Completion, InvalidRequestError, NotFoundError
from loraflow.batch import BatchCompleteConfig
from loraflow.engine import engine as engine_module
from loraflow.storage import get_store
from tasks.complete import complete
from tests.helpers import write

pytestmark = pytest.mark.usefixtures("prefect_harness")
MODEL = "tiny-llama-test"
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is my order?"},
]


@flow
def support_pipeline(questions: list[str]) -> list[str]:
    answers = [complete(MODEL, q, max_new_tokens=8, temperature=0).output.text for q in questions]
    answers.append(complete(MODEL, messages=CHAT, max_new_tokens=8, temperature=0).output.text)
    return answers


def test_the_complete_task_inside_a_flow_uses_one_engine() -> None:
    answers = support_pipeline(["Hi", "Track my order"])
    engine = engine_module.get_engine(MODEL)
    assert answers[0] == Completion.create(MODEL, "Hi", 8, 0).output.text
    assert (
        answers[2]
        == Completion.create(MODEL, messages=CHAT, max_new_tokens=8, temperature=0).output.text
    )
    assert support_pipeline(["Hi"])[0] == answers[0]
    assert engine_module.get_engine(MODEL) is engine  # loaded once for the process
    with pytest.raises(InvalidRequestError, match="temperature"):  # a task alone, no flow
        complete(MODEL, "Hi", temperature=3)
    with pytest.raises(InvalidRequestError, match="top_p"):  # the sampling options reach it
        complete(MODEL, "Hi", top_p=2.0)
    sampled = complete(MODEL, "Hi", max_new_tokens=6, temperature=1.0, seed=11, top_k=5)
    again = Completion.create(MODEL, "Hi", 6, 1.0, seed=11, top_k=5)
    assert sampled.output.text == again.output.text


def jsonl(lines: list[dict]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


def test_batch_flow_writes_results_in_input_order(tmp_path: Path) -> None:
    prompts = [f"Question number {i}?" for i in range(7)]
    source = write(
        tmp_path,
        "prompts.jsonl",
        jsonl([{"prompt": p} for p in prompts] + [{"messages": CHAT}]),
    )
    config = BatchCompleteConfig(
        model=MODEL,
        input_data_path=str(source),
        max_new_tokens=6,
        temperature=1.0,
        seed=3,
        num_generations=2,
        batch_size=3,
    )
    result = batch_complete(config)
    assert result.job_id.startswith("batch-") and result.inputs == 8
    key = f"batch-completions/{result.job_id}/results.jsonl"
    assert result.output_data_path.endswith(key)
    rows = [json.loads(line) for line in get_store().get_bytes(key).decode().splitlines()]
    assert [r["index"] for r in rows] == list(range(8))
    assert [r.get("prompt") for r in rows[:7]] == prompts and rows[7]["messages"] == CHAT
    expected = Completion.generate(
        MODEL, [*prompts, CHAT], num_generations=2, max_new_tokens=6, temperature=1.0, seed=3
    )
    assert [r["generations"] for r in rows] == [e.generations for e in expected]
    assert result.completion_tokens == sum(sum(r["statistics"]["output_tokens"]) for r in rows)


def test_batch_flow_reads_and_writes_s3(
    tmp_path: Path, use_s3: str, s3_bucket: str, moto_endpoint: str
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    body = 'prompt,messages\nHello there,\n,"' + json.dumps(CHAT).replace('"', '""') + '"\n'
    s3.put_object(Bucket=s3_bucket, Key="in/prompts.csv", Body=body.encode())
    out = f"s3://{s3_bucket}/out/results.jsonl"
    result = batch_complete(
        BatchCompleteConfig(
            model=MODEL,
            input_data_path=f"s3://{s3_bucket}/in/prompts.csv",
            output_data_path=out,
            max_new_tokens=4,
        )
    )
    assert result.output_data_path == out and result.inputs == 2
    rows = s3.get_object(Bucket=s3_bucket, Key="out/results.jsonl")["Body"].read().splitlines()
    assert json.loads(rows[1])["messages"] == CHAT


@pytest.mark.parametrize(
    ("name", "body", "error", "match"),
    [
        (
            "bad.csv",
            'prompt\nfine\n""\n',
            InvalidRequestError,
            r"bad.csv line 3: give a non-empty prompt",
        ),
        (
            "bad.jsonl",
            '{"prompt": "a"}\n{oops\n',
            InvalidRequestError,
            r"bad.jsonl line 2: not valid JSON",
        ),
        (
            "bad.jsonl",
            '{"messages": [{"role": "user", "content": 1}]}\n',
            InvalidRequestError,
            r"bad.jsonl line 1: messages\[0\].content",
        ),
        (
            "cols.csv",
            "question\nhi\n",
            InvalidRequestError,
            r"the header needs prompt \(or messages\); it has \['question'\]",
        ),
    ],
)
def test_bad_batch_input_names_the_row_and_writes_nothing(
    tmp_path: Path, name: str, body: str, error: type, match: str
) -> None:
    source = write(tmp_path, name, body)
    with pytest.raises(error, match=match):
        batch_complete(BatchCompleteConfig(model=MODEL, input_data_path=str(source)))
    assert not list(get_store().list("batch-completions/"))
    with pytest.raises(NotFoundError, match="no file"):
        batch_complete(BatchCompleteConfig(model=MODEL, input_data_path=str(tmp_path / "none.csv")))
