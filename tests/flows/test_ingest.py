"""The ingest flow on Prefect's test harness (one per session)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

from flows import main
from flows.ingest import IngestConfig, ingest
from loraflow import DataValidationError, File
from loraflow.data import validate
from loraflow.storage import get_store
from tests.helpers import csv_rows, write

pytestmark = pytest.mark.usefixtures("prefect_harness")


def artifacts(key: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def test_ingest_splits_and_stores(backend: str, tmp_path: Path) -> None:
    path = write(tmp_path, "support.csv", csv_rows(300))
    result = ingest(IngestConfig(source=str(path), validation_fraction=0.1, seed=7))
    assert (result.training_rows, result.validation_rows) == (270, 30)
    train = validate(File.download(result.training_file).content.encode()).frame
    val = validate(File.download(result.validation_file).content.encode()).frame
    whole = pl.concat([train, val]).sort("prompt")
    assert whole.equals(validate(path).frame.sort("prompt"))  # nothing lost, nothing doubled
    assert train.join(val, on="prompt").is_empty()
    again = ingest(IngestConfig(source=str(path), validation_fraction=0.1, seed=7))
    assert (
        File.download(again.validation_file).content
        == File.download(result.validation_file).content
    )  # the split is reproducible for a seed


def test_ingest_without_split_keeps_the_file_whole(tmp_path: Path) -> None:
    path = write(tmp_path, "all.csv", csv_rows(12))
    result = ingest(IngestConfig(source=str(path), validation_fraction=0))
    assert result.validation_file is None
    assert File.download(result.training_file).content == path.read_text()


def test_ingest_of_chat_jsonl_keeps_the_conversations(tmp_path: Path) -> None:
    rows = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"a{i}"},
                ]
            }
        )
        for i in range(20)
    ]
    result = ingest(IngestConfig(source=str(write(tmp_path, "chat.jsonl", "\n".join(rows)))))
    assert File.get(result.training_file).filename == "chat.train.jsonl"
    assert '"messages"' in File.download(result.validation_file).content


def test_invalid_data_fails_the_run_stores_nothing_and_publishes_the_report(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "broken-set.csv", "prompt,response\na,b\n,c\nd,\n")
    state = ingest(IngestConfig(source=str(path)), return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError):
        state.result()
    assert list(get_store().list()) == []
    (summary,) = artifacts("validation-broken-set-csv")
    assert "not valid" in summary.data
    (table,) = artifacts("validation-broken-set-csv-problems")
    assert '"line": 3' in table.data and '"line": 4' in table.data
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.state.is_failed()
        assert client.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))


def test_module_entry_point_reads_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write(tmp_path, "ingest.yaml", f"source: {write(tmp_path, 'd.csv', csv_rows(10))}\n")
    main(ingest, ["flows.ingest", str(config)])
    assert '"training_rows": 9' in capsys.readouterr().out


def test_builtin_dataset_is_the_default() -> None:
    result = ingest(IngestConfig())
    assert (result.training_rows, result.validation_rows) == (180, 20)
