"""The fine-tune flow imported and called from Python, with the real SmolLM2 (smoke test)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flows.fine_tune import fine_tune
from loraflow import File
from loraflow.data.sources import resolve_source
from loraflow.fine_tuning import FineTuneRequest

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.slow
def test_smollm2_fine_tunes_for_a_few_steps_from_a_python_import(tmp_path: Path) -> None:
    rows = resolve_source("builtin:customer_support.csv").read_text().splitlines()[:17]
    path = tmp_path / "support-16.csv"
    path.write_text("\n".join(rows) + "\n")
    file_id = File.upload(path).id
    outcome = fine_tune(
        FineTuneRequest(
            model="smollm2-135m-instruct",
            training_file=file_id,
            hyperparameters={"epochs": 1, "batch_size": 8, "validation_fraction": 0},
            suffix="smoke",
        )
    )
    assert outcome.steps == 2
    assert outcome.base_model == "smollm2-135m-instruct"
    assert outcome.fine_tuned_model.startswith("smollm2-135m-instruct.smoke.")
    assert math.isfinite(outcome.train_loss) and outcome.train_loss < 10
    assert outcome.job_id.startswith("ft-")
