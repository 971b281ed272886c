"""The fine-tune flow imported and called from Python, with the real SmolLM2 (smoke test)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers import tiny_fine_tune

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.slow
def test_smollm2_fine_tunes_for_a_few_steps_from_a_python_import(tmp_path: Path) -> None:
    outcome = tiny_fine_tune(
        tmp_path, "smoke", rows=16, model="smollm2-135m-instruct",
        epochs=1, batch_size=8, lr=0.002, validation_fraction=0,
    )  # fmt: skip
    assert outcome.steps == 2
    assert outcome.base_model == "smollm2-135m-instruct"
    assert outcome.fine_tuned_model.startswith("smollm2-135m-instruct.smoke.")
    assert math.isfinite(outcome.train_loss) and outcome.train_loss < 10
    assert outcome.job_id.startswith("ft-")
