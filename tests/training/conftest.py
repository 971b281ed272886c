"""Fixtures for training tests: the tiny model, a reporter that records, plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loraflow.data import validate
from loraflow.data.split import split_frame
from loraflow.models import prepare, resolve_model
from loraflow.storage.local import LocalStore
from loraflow.training.checkpoints import CheckpointStore
from loraflow.training.distributed import Distributed
from loraflow.training.hyperparameters import parse_hyperparameters
from loraflow.training.loop import TrainPlan

SUPPORT = Path(__file__).resolve().parents[2] / "src/loraflow/datasets/customer_support.csv"


@dataclass
class RecordingReporter:
    """Records what the loop reports; can ask it to stop or fail at a step (loraflow's seam)."""

    stop_at: int | None = None
    fail_at: int | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    total_steps: int | None = None

    def begin(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def event(self, message: str, level: str = "info") -> None:
        self.events.append((level, message))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if step == self.fail_at:
            raise RuntimeError(f"worker killed at step {step}")
        self.history.append((step, values))

    def should_stop(self) -> bool:
        return (
            self.stop_at is not None and bool(self.history) and self.history[-1][0] >= self.stop_at
        )


@pytest.fixture
def tiny_plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Build a TrainPlan on the tiny model and the bundled data (60 rows, quick)."""
    spec = resolve_model("tiny-llama-test")
    model_dir = prepare(spec)
    frame = validate(SUPPORT).frame.head(60)
    train, val = split_frame(frame, 0.1, 0)
    checkpoints = CheckpointStore(LocalStore(tmp_path / "store"), "fine-tunes/ft-test/checkpoints")

    def make(out: str = "out", **hyper: Any) -> TrainPlan:
        hp = parse_hyperparameters({"epochs": 2, "batch_size": 4, "lr": 0.01, **hyper})
        distributed = hp.distributed or Distributed()
        return TrainPlan(model_dir, spec, hp, train, val, checkpoints, tmp_path / out, distributed)

    return make
