"""One fine-tune from a checked request to a tracked, stored adapter.

Writes, under the object store: ``fine-tunes/<job>/checkpoints/…`` while training,
``fine-tunes/<job>/adapter/…`` at the end, and ``models/<fine_tuned_model>.json`` naming the
result. Re-running a job resumes from its last checkpoint and continues its MLflow run.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from pydantic import BaseModel

from loraflow import registry, tracking
from loraflow.data import validate
from loraflow.data.split import split_frame
from loraflow.files import FileRepository
from loraflow.fine_tuning import CheckedRequest
from loraflow.models import model_revision, prepare
from loraflow.settings import get_settings
from loraflow.storage import get_store
from loraflow.training.checkpoints import CheckpointStore
from loraflow.training.loop import Reporter, Trainer, TrainPlan


class FineTuneOutcome(BaseModel):
    job_id: str
    fine_tuned_model: str
    base_model: str
    base_revision: str
    steps: int
    resumed_from: int | None
    train_loss: float | None
    eval_loss: float | None
    mlflow_run_id: str
    model_uri: str
    adapter_prefix: str
    training_file: str
    training_sha256: str
    validation_file: str | None
    validation_sha256: str | None


class FanOut:
    """One reporter that forwards to several; it stops when any of them says so."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def begin(self, total_steps: int) -> None:
        for r in self.reporters:
            r.begin(total_steps)

    def event(self, message: str, level: str = "info") -> None:
        for r in self.reporters:
            r.event(message, level)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for r in self.reporters:
            r.metrics(step, values)

    def should_stop(self) -> bool:
        return any(r.should_stop() for r in self.reporters)


def _frames(checked: CheckedRequest, files: FileRepository) -> tuple[Any, Any]:
    def load(file_id: str, name: str) -> Any:
        data = files.read_bytes(file_id)
        return validate(data, name=name, config=files.validation).raise_for_errors().frame

    train = load(checked.training.id, checked.training.filename)
    if checked.validation is not None:
        return train, load(checked.validation.id, checked.validation.filename)
    hp = checked.hyperparameters
    if hp.validation_fraction > 0 and len(train) >= 10:
        return split_frame(train, hp.validation_fraction, hp.seed)
    return train, None


def _mlflow_run(job_id: str) -> str | None:
    """The MLflow run of an earlier attempt of this job, to continue it."""
    runs = mlflow.search_runs(
        filter_string=f"tags.`loraflow.job_id` = '{job_id}'", output_format="list"
    )
    return runs[0].info.run_id if runs else None


def run_fine_tune(
    checked: CheckedRequest, job_id: str, reporter: Reporter, tags: dict[str, str]
) -> FineTuneOutcome:
    """Train, track and store one fine-tune. Idempotent per ``job_id``: a re-run resumes."""
    request, store, files = checked.request, get_store(), FileRepository.from_settings()
    name = str(request.fine_tuned_model)
    _claim(name, job_id)
    model_dir = prepare(checked.spec)
    revision = model_revision(model_dir)
    train, val = _frames(checked, files)
    tracking.configure()
    prefix = f"fine-tunes/{job_id}"
    with mlflow.start_run(run_id=_mlflow_run(job_id), run_name=job_id) as run:
        mlflow.set_tags({"loraflow.job_id": job_id, "loraflow.fine_tuned_model": name, **tags})
        mlflow.log_params(
            tracking.flatten(
                {
                    "base_model": checked.spec.name,
                    "base_revision": revision,
                    "training_file": checked.training.id,
                    "training_sha256": checked.training.sha256,
                    "validation_file": checked.validation.id if checked.validation else "split",
                    "validation_sha256": checked.validation.sha256 if checked.validation else "",
                    "loraflow_commit": tracking.code_version(),
                    **checked.hyperparameters.model_dump(),
                }
            )
        )
        with tempfile.TemporaryDirectory(dir=_scratch()) as scratch:
            plan = TrainPlan(
                model_dir=model_dir,
                spec=checked.spec,
                hyperparameters=checked.hyperparameters,
                train=train,
                validation=val,
                checkpoints=CheckpointStore(store, f"{prefix}/checkpoints"),
                output_dir=Path(scratch),
            )
            result = Trainer(plan, FanOut(reporter, tracking.MlflowReporter())).run()
            tracking.write_base_ref(result.adapter_dir, checked.spec.name, revision)
            tracking.log_loss_curve(_full_history(run.info.run_id))
            model_uri = tracking.log_adapter(result.adapter_dir)
            for path in sorted(result.adapter_dir.iterdir()):
                store.put(f"{prefix}/adapter/{path.name}", path)
    outcome = FineTuneOutcome(
        job_id=job_id,
        fine_tuned_model=name,
        base_model=checked.spec.name,
        base_revision=revision,
        steps=result.steps,
        resumed_from=result.resumed_from,
        train_loss=result.train_loss,
        eval_loss=result.eval_loss,
        mlflow_run_id=run.info.run_id,
        model_uri=model_uri,
        adapter_prefix=f"{prefix}/adapter",
        training_file=checked.training.id,
        training_sha256=checked.training.sha256,
        validation_file=checked.validation.id if checked.validation else None,
        validation_sha256=checked.validation.sha256 if checked.validation else None,
    )
    registry.write_record(outcome.model_dump() | {"created_at": datetime.now(UTC).isoformat()})
    reporter.event(f"fine-tuned model {name} is ready (MLflow run {run.info.run_id})")
    return outcome


def _claim(name: str, job_id: str) -> None:
    """Refuse a model name another job already produced (names are stamped to the second)."""
    from loraflow.errors import InvalidRequestError, NotFoundError

    try:
        owner = registry.read_record(name).get("job_id")
    except NotFoundError:
        return
    if owner != job_id:
        raise InvalidRequestError(
            f"fine_tuned_model: {name} already exists (made by {owner}); start the fine-tune "
            "again for a new name, or give it another suffix"
        )


def _full_history(run_id: str) -> list[dict[str, float]]:
    """Loss per step across every attempt of the run, from MLflow itself."""
    client = mlflow.MlflowClient()
    steps: dict[int, dict[str, float]] = {}
    for key in ("loss", "eval_loss"):
        for m in client.get_metric_history(run_id, key):
            steps.setdefault(m.step, {"step": m.step})[key] = m.value
    return [steps[s] for s in sorted(steps) if "loss" in steps[s]]


def _scratch() -> Path:
    path = get_settings().home / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path
