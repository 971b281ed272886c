"""One process of a launched fine-tune: ``python -m loraflow.training.worker <run dir>``.

``accelerate launch`` starts one per device (``loraflow.training.launch`` starts it). Each
rebuilds the plan the calling process wrote; the main process (rank 0) writes events and
metrics to ``events.jsonl`` and the outcome to ``result.json``, ``cancelled.json`` or
``error.json``, and stops the run with a checkpoint when asked (a ``stop`` file) or when the
calling process is gone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from loraflow import pidfile
from loraflow.errors import LoraflowError


class FileReporter:
    """The main process's reporter: JSON lines the calling process relays."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        parent = os.environ.get("LORAFLOW_TRAINING_PARENT")  # the job's process, as JSON
        self.parent = json.loads(parent) if parent else None

    def _write(self, item: dict[str, object]) -> None:
        with (self.run_dir / "events.jsonl").open("a") as f:
            f.write(json.dumps(item) + "\n")

    def begin(self, total_steps: int) -> None:
        self._write({"begin": total_steps})

    def event(self, message: str, level: str = "info") -> None:
        self._write({"event": message, "level": level})

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._write({"step": step, "metrics": values})

    def should_stop(self) -> bool:
        gone = self.parent is not None and not pidfile.running(self.parent)
        return gone or (self.run_dir / "stop").exists()


class Quiet:
    """The other processes' reporter: they train, the main process speaks."""

    def begin(self, total_steps: int) -> None:
        pass

    def event(self, message: str, level: str = "info") -> None:
        pass

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def main(argv: list[str] | None = None) -> int:
    import polars as pl

    from loraflow.models.zoo import ModelSpec
    from loraflow.settings import get_settings
    from loraflow.storage import open_store
    from loraflow.training.checkpoints import CheckpointStore
    from loraflow.training.distributed import Distributed
    from loraflow.training.hyperparameters import Hyperparameters
    from loraflow.training.launch import result_dict
    from loraflow.training.loop import Trainer, TrainingCancelled, TrainPlan

    run_dir = Path((argv or sys.argv[1:])[0])
    described = json.loads((run_dir / "plan.json").read_text())
    store = open_store(get_settings().model_copy(update={"storage_uri": described["store"]}))
    validation = run_dir / "validation.parquet"
    plan = TrainPlan(
        model_dir=Path(described["model_dir"]),
        spec=ModelSpec.model_validate(described["spec"]),
        hyperparameters=Hyperparameters.model_validate(described["hyperparameters"]),
        train=pl.read_parquet(run_dir / "train.parquet"),
        validation=pl.read_parquet(validation) if validation.exists() else None,
        checkpoints=CheckpointStore(store, described["checkpoints"]),
        output_dir=Path(described["output_dir"]),
        distributed=Distributed.model_validate(described["distributed"]),
    )
    main_process = os.environ.get("RANK", "0") == "0"
    reporter = FileReporter(run_dir) if main_process else Quiet()
    outcome: tuple[str, dict[str, object]]
    try:
        result = Trainer(plan, reporter).run()
        outcome = ("result.json", result_dict(result))
    except TrainingCancelled as stopped:
        outcome = ("cancelled.json", {"step": stopped.step})
    except LoraflowError as exc:
        outcome = ("error.json", {"message": str(exc)})
    if main_process:
        (run_dir / f"{outcome[0]}.part").write_text(json.dumps(outcome[1]))
        (run_dir / f"{outcome[0]}.part").rename(run_dir / outcome[0])
    return 1 if outcome[0] == "error.json" else 0


if __name__ == "__main__":
    sys.exit(main())
