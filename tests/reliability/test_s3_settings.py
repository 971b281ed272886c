"""S3 access comes from loraflow's settings alone: with only LORAFLOW_S3_* set (no AWS_*
variables, no AWS config files), a fine-tune stores its data, checkpoints, adapter and MLflow
artifacts on the moto server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import boto3
import pytest

from loraflow import Model
from loraflow import settings as settings_module
from tests.helpers import tiny_fine_tune

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_harness")]


def test_a_fine_tune_on_s3_with_only_loraflow_credentials(
    tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = {"aws_access_key_id": "loraflow-id", "aws_secret_access_key": "loraflow-secret"}
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **keys)
    bucket = f"loraflow-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for name in list(os.environ):
        if name.startswith(("AWS_", "MLFLOW_S3_")):
            monkeypatch.delenv(name)
    for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        monkeypatch.setenv(name, "")  # what MLflow's set-up writes goes again after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", f"s3://{bucket}/lf")
    monkeypatch.setenv("LORAFLOW_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("LORAFLOW_S3_REGION", "us-east-1")
    monkeypatch.setenv("LORAFLOW_S3_ACCESS_KEY_ID", keys["aws_access_key_id"])
    monkeypatch.setenv("LORAFLOW_S3_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
    settings_module.reset()

    outcome = tiny_fine_tune(tmp_path, "s3-creds", rows=24, epochs=1)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="lf/")
    stored = [o["Key"] for o in listed.get("Contents", [])]
    assert any(k.startswith("lf/mlflow-artifacts/") for k in stored), stored
    assert any(k.startswith(f"lf/fine-tunes/{outcome.job_id}/checkpoints/") for k in stored)
    assert any(k.startswith(f"lf/fine-tunes/{outcome.job_id}/adapter/") for k in stored)
    got = Model.get(outcome.fine_tuned_model)
    assert got.metrics["train_loss"] > 0 and got.lineage.mlflow_run_id == outcome.mlflow_run_id
