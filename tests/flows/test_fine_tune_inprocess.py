"""The fine-tune flow imported and called from Python, with the real SmolLM2 (smoke test).

The fine-tune itself is the session's ``smollm2_tuned`` (tests/conftest.py), which the vLLM
smoke test serves too."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loraflow.registry import ModelRecord


@pytest.mark.slow
def test_smollm2_fine_tunes_for_a_few_steps_from_a_python_import(
    smollm2_tuned: tuple[Path, ModelRecord],
) -> None:
    _, outcome = smollm2_tuned
    assert outcome.steps == 2
    assert outcome.base_model == "smollm2-135m-instruct"
    assert outcome.fine_tuned_model.startswith("smollm2-135m-instruct.smoke.")
    assert math.isfinite(outcome.train_loss) and outcome.train_loss < 10
    assert outcome.job_id.startswith("ft-")
