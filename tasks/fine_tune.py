"""Tasks: prepare a base model, and train a LoRA adapter reporting to the run's log."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from loraflow.fine_tuning import CheckedRequest

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
POLL_SECONDS = 3.0


class PrefectReporter:
    """The training loop's events and metrics as run log lines; stops on SIGTERM or cancel.

    A metrics line is the ``str()`` of a dict, like a Hugging Face Trainer log line, which is
    what LLM Engine's fine-tune events carry.
    """

    def __init__(self, logger: Any, flow_run_id: UUID | None) -> None:
        self.logger = logger
        self.flow_run_id = flow_run_id
        self.stop = threading.Event()
        self._polled = time.monotonic()
        self.progress = _progress_bar()

    def begin(self, total_steps: int) -> None:
        if self.progress:
            self.progress.start()
            self.task = self.progress.add_task("training", total=total_steps)

    def event(self, message: str, level: str = "info") -> None:
        self.logger.log(LEVELS.get(level, logging.INFO), message)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        shown = {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
        self.logger.info(str({**shown, "step": step}))
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


def is_cancelling(flow_run_id: UUID) -> bool:
    """Whether someone asked Prefect to cancel this run (covers runs not under a runner)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and state.type.value in {"CANCELLING", "CANCELLED"}


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
@task(name="prepare-base-model", tags=["loraflow", "models"], retries=2, retry_delay_seconds=10)
def prepare_base_model(model: str) -> str:
    """Make the base model a local checkpoint (converted or built once); returns its path."""
    from loraflow.models import prepare, resolve_model

    return str(prepare(resolve_model(model)))


@task(name="train-adapter", tags=["loraflow", "training"], cache_policy=NO_CACHE)
def train_adapter(checked: CheckedRequest, job_id: str) -> Any:
    """Train the LoRA adapter; resumes from the job's last checkpoint if there is one."""
    from prefect.runtime import flow_run

    from loraflow.training.pipeline import run_fine_tune

    reporter = PrefectReporter(get_run_logger(), _uuid(flow_run.id))
    reporter.event(f"training in process {os.getpid()}")
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
    try:
        with stop_on_sigterm(reporter.stop):
            return run_fine_tune(checked, job_id, reporter, tags)
    finally:
        reporter.close()


def _uuid(value: Any) -> UUID | None:
    return UUID(str(value)) if value else None
