"""The retrain pipeline in process (the Python-import way): train and promote, skip when the
data is unchanged, retrain when forced or when the data changes, and gate the candidate."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

from flows.retrain import retrain
from loraflow import registry
from loraflow.promotion import Gate
from loraflow.retraining import Dataset, Precedent, RetrainConfig, exit_code, unchanged_reason
from loraflow.tracking import configure
from tests.helpers import SUPPORT_CSV, write

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAMILY = "tiny-llama-test.nightly"
HYPER = {"epochs": 2, "batch_size": 4, "lr": 0.01}


def dataset(folder: Path, name: str, rows: slice) -> Path:
    lines = SUPPORT_CSV.read_text().splitlines()
    folder.mkdir(parents=True, exist_ok=True)
    return write(folder, name, "\n".join([lines[0], *lines[1:][rows]]) + "\n")


def config(source: Path | str, **changes: object) -> RetrainConfig:
    base = {
        "dataset": str(source),
        "model": "tiny-llama-test",
        "suffix": "nightly",
        "hyperparameters": HYPER,
        "validation_fraction": 0.2,
        "gate": Gate(max_examples=12, max_new_tokens=4),
    }
    return RetrainConfig(**(base | changes))


def test_retrain_promotes_then_skips_unchanged_data_then_gates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    incoming = tmp_path / "incoming"
    dataset(incoming, "a.csv", slice(0, 50))
    checked: list[int] = []  # the rows of each validation that read and checked a dataset
    module = sys.modules["loraflow.data.validate"]
    check = module._check_values
    monkeypatch.setattr(
        module, "_check_values", lambda table, *a: checked.append(table.records) or check(table, *a)
    )

    first = retrain(config(f"{incoming}/"))  # a prefix: its newest file
    assert first.outcome == "promoted", first.reason
    assert checked == [50]  # ingest validated once; training and scoring read its rows
    assert first.dataset == str(incoming / "a.csv")
    assert registry.resolve(f"{FAMILY}@champion") == first.candidate == first.champion

    configure()
    tags = MlflowClient().get_model_version(FAMILY, "1").tags
    assert tags["loraflow.dataset_sha256"] == first.dataset_sha256
    assert tags["loraflow.dataset"] == first.dataset
    check_artifacts(registry.read_record(first.candidate).job_id, "tiny-llama-test-nightly")

    with get_client(sync_client=True) as client:
        before = len(client.read_flow_runs())
    second = retrain(config(f"{incoming}/"), return_state=True)
    assert second.name == "Unchanged" and second.type.value == "COMPLETED"
    result = second.result()
    assert result.outcome == "unchanged" and result.champion == first.candidate
    assert "nothing to do" in result.reason and first.dataset_sha256[:12] in result.reason
    assert exit_code(second.name, second.type.value) == 0
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == before + 1  # no ingest, no fine-tune ran
    assert len(registry.list_records()) == 1

    # forced, with a gate no candidate can pass: trained, scored, rejected, champion kept
    gated = config(f"{incoming}/", force=True, gate=Gate(min_improvement=100.0, max_examples=12))
    third = retrain(gated, return_state=True)
    assert third.name == "Rejected" and exit_code(third.name, third.type.value) == 3
    rejected = third.result()
    assert rejected.candidate != first.candidate and rejected.champion == first.candidate
    assert registry.resolve(f"{FAMILY}@champion") == first.candidate
    assert "needed more than 0 and at least 100.0" in rejected.reason
    tags = MlflowClient().get_model_version(FAMILY, "2").tags
    assert (
        tags["loraflow.recipe"]
        == MlflowClient().get_model_version(FAMILY, "1").tags["loraflow.recipe"]
    )
    assert tags["loraflow.promotion.champion.decision"] == "rejected"
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[third.state_details.flow_run_id]
                )
            )
        )
    names = sorted(r.name for r in children)
    assert len(children) == 3 and any(n.startswith("ft-") for n in names)  # ingest, job, promote


def check_artifacts(job_id: str, family: str) -> None:
    """What the Prefect UI shows of a retrain run."""
    with get_client(sync_client=True) as client:
        latest = {a.key: a for a in client.read_latest_artifacts()}
    image = latest[f"loss-curve-{job_id}"]
    assert image.type == "image" and image.data.startswith("data:image/png;base64,")
    assert base64.b64decode(image.data.split(",", 1)[1])[:4] == b"\x89PNG"
    progress = latest[f"training-{job_id}"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    evaluation = latest[f"promotion-{family}-evaluation"]
    assert evaluation.type == "table" and "candidate" in str(evaluation.data)
    assert latest[f"promotion-{family}"].type == "markdown"
    assert "**promoted**" in latest[f"retrain-{family}"].data
    assert latest["validation-a-csv-summary"].type == "table"


def test_a_bad_dataset_fails_the_run_naming_the_problem(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.csv", "prompt,answer\nhello,world\n")
    state = retrain(config(bad, suffix="bad"), return_state=True)
    assert state.type.value == "FAILED" and exit_code(state.name, state.type.value) == 1
    assert "response" in state.message
    empty = tmp_path / "empty"
    empty.mkdir()
    state = retrain(config(f"{empty}/", suffix="bad"), return_state=True)
    assert state.type.value == "FAILED" and "no .csv or .jsonl file under" in state.message


def test_a_recipe_that_failed_the_gate_is_not_trained_again() -> None:
    data = Dataset(location="a.csv", path="a.csv", sha256="ab" * 32)
    rejected = Precedent(model="m.nightly.261201-020000", version=3, decision="rejected")
    reason = unchanged_reason(data, [rejected], None, "champion")
    assert reason is not None and "version 3" in reason and "was rejected" in reason
    assert "force" in reason and data.sha256[:12] in reason
    assert unchanged_reason(data, [], None, "champion") is None
