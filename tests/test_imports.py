"""Importing the SDK, the CLI and the flows stays light: heavy libraries load on first use."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "accelerate", "mlflow")


def test_heavy_libraries_are_not_imported_eagerly() -> None:
    code = (
        "import sys, loraflow, loraflow.cli, flows.ingest, flows.retrain, deployments.build\n"
        "from loraflow import File\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_sdk_imports_without_polars_torch_or_prefect() -> None:
    """``import loraflow`` and ``from loraflow import Completion`` load only the light parts."""
    code = (
        "import sys, loraflow\n"
        "from loraflow import Completion\n"
        "print(sorted(m for m in ('polars', 'torch', 'prefect', 'transformers', 'mlflow') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
