"""One fine-tune from a checked request to a tracked, stored adapter.

Writes, under the object store: ``fine-tunes/<job>/checkpoints/…`` while training and
``fine-tunes/<job>/adapter/…`` at the end; returns the fine-tune's ModelRecord, which the
register step stores. The data comes as the stored files' validated rows (never validated
again). Re-running a job resumes from its last checkpoint and continues its MLflow run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow

from loraflow import __version__, registry, tracking
from loraflow.data.split import split_frame
from loraflow.files import FileRepository
from loraflow.fine_tuning import CheckedRequest
from loraflow.models import model_revision, prepare
from loraflow.registry import ModelRecord
from loraflow.settings import get_settings
from loraflow.storage import get_store
from loraflow.training.checkpoints import CheckpointStore
from loraflow.training.distributed import Distributed, check_capacity
from loraflow.training.loop import Reporter, Trainer, TrainPlan


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
    train = files.rows(checked.training.id)
    if checked.validation is not None:
        return train, files.rows(checked.validation.id)
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
) -> ModelRecord:
    """Train, track and store one fine-tune; its record, not yet registered.

    Idempotent per ``job_id``: a re-run resumes. ``tags`` go on the MLflow run.
    """
    request, store, files = checked.request, get_store(), FileRepository.from_settings()
    name = str(request.fine_tuned_model)
    distributed = checked.hyperparameters.distributed or Distributed()
    check_capacity(distributed)
    _claim(name, job_id)
    model_dir = prepare(checked.spec)
    revision = model_revision(model_dir)
    train, val = _frames(checked, files)
    tracking.configure()
    prefix = f"fine-tunes/{job_id}"
    with mlflow.start_run(run_id=_mlflow_run(job_id), run_name=job_id) as run:
        mlflow.set_tags({"loraflow.job_id": job_id, "loraflow.fine_tuned_model": name, **tags})
        reporter.event(f"tracking in MLflow run {run.info.run_id}")  # FineTune.progress reads it
        commit = tracking.code_version()
        mlflow.log_params(
            tracking.flatten(
                {
                    "base_model": checked.spec.name,
                    "base_revision": revision,
                    "training_file": checked.training.id,
                    "training_sha256": checked.training.sha256,
                    "validation_file": checked.validation.id if checked.validation else "split",
                    "validation_sha256": checked.validation.sha256 if checked.validation else "",
                    "loraflow_commit": commit,
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
                distributed=distributed,
            )
            result = _train(plan, FanOut(reporter, tracking.MlflowReporter()))
            tracking.write_base_ref(result.adapter_dir, checked.spec.name, revision)
            tracking.log_loss_curve(_full_history(run.info.run_id))
            model_uri = tracking.log_adapter(result.adapter_dir)
            for path in sorted(result.adapter_dir.iterdir()):
                store.put(f"{prefix}/adapter/{path.name}", path)
    record = ModelRecord(
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
        hyperparameters=checked.hyperparameters.model_dump(mode="json"),
        loraflow_version=__version__,
        code_commit=commit,
        prefect_flow_run_id=tags.get("prefect.flow_run_id"),
    )
    reporter.event(f"fine-tuned model {name} is trained (MLflow run {run.info.run_id})")
    return record


def _train(plan: TrainPlan, reporter: Reporter) -> Any:
    """Train in this process, or under ``accelerate launch`` with several processes."""
    if plan.distributed.launched:
        from loraflow.training.launch import run_launched

        return run_launched(plan, reporter)
    return Trainer(plan, reporter).run()


def _claim(name: str, job_id: str) -> None:
    """Refuse a model name another job already produced (names are stamped to the second)."""
    from loraflow.errors import InvalidRequestError, NotFoundError

    try:
        owner = registry.read_record(name).job_id
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
