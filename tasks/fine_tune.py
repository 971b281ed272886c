"""Tasks: prepare a base model, and train a LoRA adapter reporting to the run's log."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from loraflow.fine_tuning import CheckedRequest
from loraflow.jobs import DEVICE_LIMIT, is_cancelling
from loraflow.registry import ModelRecord
from tasks.validate import artifact_key

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
POLL_SECONDS = 3.0
PROGRESS_SECONDS = 2.0  # at most one progress artifact update per this many seconds


class PrefectReporter:
    """The training loop's events and metrics as run log lines; stops on SIGTERM or cancel.

    A metrics line is the ``str()`` of a dict, like a Hugging Face Trainer log line, which is
    what LLM Engine's fine-tune events carry.
    """

    def __init__(self, logger: Any, flow_run_id: UUID | None, job_id: str = "") -> None:
        self.logger = logger
        self.flow_run_id = flow_run_id
        self.stop = threading.Event()
        self._polled = time.monotonic()
        self.progress = _progress_bar()
        self.artifact = ProgressArtifact(job_id, logger) if flow_run_id else None

    def begin(self, total_steps: int) -> None:
        self.logger.info(f"training: {total_steps} steps")  # FineTune.progress reads this
        if self.artifact:
            self.artifact.begin(total_steps)
        if self.progress:
            self.progress.start()
            self.task = self.progress.add_task("training", total=total_steps)

    def event(self, message: str, level: str = "info") -> None:
        self.logger.log(LEVELS.get(level, logging.INFO), message)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        shown = {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
        self.logger.info(str({**shown, "step": step}))
        if self.artifact:
            self.artifact.update(step)
        if self.progress:
            loss = f"loss {values['loss']:.3f}" + (
                f", eval {values['eval_loss']:.3f}" if "eval_loss" in values else ""
            )
            self.progress.update(self.task, completed=step, description=loss)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()

    def should_stop(self) -> bool:
        if (
            not self.stop.is_set()
            and self.flow_run_id
            and time.monotonic() - self._polled > POLL_SECONDS
        ):
            self._polled = time.monotonic()
            if is_cancelling(self.flow_run_id):
                self.stop.set()
        return self.stop.is_set()


class ProgressArtifact:
    """Training progress as a Prefect progress artifact (percent of steps), rate-limited.

    The UI shows it on the run's page; an API hiccup costs an update, never the training.
    """

    def __init__(self, job_id: str, logger: Any) -> None:
        self.key = artifact_key("training", job_id or "fine-tune")
        self.logger = logger
        self.id: UUID | None = None
        self.total = 0
        self._sent = 0.0

    def begin(self, total_steps: int) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total = max(1, total_steps)
        try:
            self.id = create_progress_artifact(
                0.0, key=self.key, description=f"Training steps done ({total_steps} in all)"
            )
        except Exception as exc:
            self.logger.debug(f"no progress artifact: {exc}")

    def update(self, step: int, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        now = time.monotonic()
        if self.id is None or (not force and now - self._sent < PROGRESS_SECONDS):
            return
        self._sent = now
        try:
            update_progress_artifact(self.id, min(100.0, 100.0 * step / self.total))
        except Exception as exc:
            self.logger.debug(f"progress artifact not updated: {exc}")


def _progress_bar() -> Any:
    """A progress bar on an interactive terminal (the demo, a notebook); None in workers and CI."""
    import sys

    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


@contextmanager
def stop_on_sigterm(flag: threading.Event) -> Iterator[None]:
    """While training, SIGTERM (a runner or worker cancelling) asks the loop to stop.

    The loop then finishes its step, saves a checkpoint and ends the run as cancelled, well
    inside the runner's 30-second grace period. Outside the main thread this does nothing.
    """
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Preparing may download from a hub; a retry helps there and costs nothing once prepared.
@task(name="prepare-base-model", retries=2, retry_delay_seconds=10)
def prepare_base_model(model: str) -> str:
    """Make the base model a local checkpoint (converted or built once); returns its path."""
    from loraflow.models import prepare, resolve_model

    return str(prepare(resolve_model(model)))


@task(name="train-adapter", cache_policy=NO_CACHE)
def train_adapter(checked: CheckedRequest, job_id: str) -> ModelRecord:
    """Train the LoRA adapter; resumes from the job's last checkpoint if there is one."""
    from prefect.runtime import flow_run

    from loraflow.fine_tuning.run import run_fine_tune

    reporter = PrefectReporter(get_run_logger(), _uuid(flow_run.id), job_id)
    reporter.event(f"training in process {os.getpid()}")
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
    try:
        with device_slot(reporter), stop_on_sigterm(reporter.stop):
            outcome = run_fine_tune(checked, job_id, reporter, tags)
    finally:
        reporter.close()
    if reporter.artifact:
        reporter.artifact.update(outcome.steps, force=True)
    publish_loss_curve(outcome.mlflow_run_id, job_id)
    return outcome


@contextmanager
def device_slot(reporter: PrefectReporter) -> Iterator[None]:
    """Hold one slot of the device's global concurrency limit while training.

    ``loraflow deploy`` creates the limit (configs/deployments.yaml sets its slots); without
    it, as with the embedded defaults, training just runs.
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(DEVICE_LIMIT)
    except ObjectNotFound:
        limited = False
    else:
        limited = True
    if not limited:  # yielding outside the except: a training error must not chain onto it
        yield
        return
    reporter.event(f"waiting for a slot of the {DEVICE_LIMIT!r} concurrency limit")
    with concurrency(DEVICE_LIMIT, occupy=1, strict=True):
        reporter.event(f"holding a {DEVICE_LIMIT!r} slot")
        try:
            yield
        finally:  # logged inside the slot, so it precedes any later holder's "holding" line
            reporter.event(f"releasing the {DEVICE_LIMIT!r} slot")


def publish_loss_curve(mlflow_run_id: str, job_id: str) -> None:
    """The loss curve MLflow keeps for the run, as an image artifact in the Prefect UI.

    The PNG travels inline as a data URL, so the UI shows it without reaching MLflow.
    """
    import base64

    import mlflow
    from prefect.artifacts import create_image_artifact

    from loraflow.tracking import LOSS_PNG, configure

    configure()
    with tempfile.TemporaryDirectory() as tmp:
        png = mlflow.artifacts.download_artifacts(
            run_id=mlflow_run_id, artifact_path=LOSS_PNG, dst_path=tmp
        )
        data = Path(png).read_bytes()
    create_image_artifact(
        image_url="data:image/png;base64," + base64.b64encode(data).decode(),
        key=artifact_key("loss-curve", job_id),
        description=f"Training and validation loss of {job_id} (MLflow run {mlflow_run_id})",
    )


def _uuid(value: Any) -> UUID | None:
    return UUID(str(value)) if value else None
