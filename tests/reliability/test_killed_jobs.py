"""A fine-tune whose process is killed outright (SIGKILL: nothing runs, nothing reports) is
seen as crashed by the next ``get``, and ``resume`` continues it from its last checkpoint
under the same job id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraflow import File, FineTune, registry
from loraflow.errors import LoraflowError, NotFoundError
from loraflow.storage import get_store
from tests.helpers import SUPPORT_CSV, write

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_harness")]

CHILD = """
import json, sys
from flows.fine_tune import fine_tune
from loraflow.fine_tuning import FineTuneRequest
fine_tune(FineTuneRequest(
    model="tiny-llama-test", training_file=sys.argv[1], suffix="killed",
    hyperparameters=json.loads(sys.argv[2]),
))
"""
HYPERPARAMETERS = {"epochs": 8, "batch_size": 4, "save_every": 3, "validation_fraction": 0}


def wait_for(what: str, check, log: Path, timeout: float = 180):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; the job's output:\n{log.read_text()}")


def start_job(tmp_path: Path, hyperparameters: dict[str, object]) -> tuple[subprocess.Popen, Path]:  # type: ignore[type-arg]
    """The fine-tune flow in a child process, as a Python import runs it."""
    from prefect.settings import PREFECT_API_URL

    rows = SUPPORT_CSV.read_text().splitlines()[:25]
    file_id = File.upload(write(tmp_path, "killed.csv", "\n".join(rows) + "\n")).id
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "job.log"
    with log.open("w") as sink:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, file_id, json.dumps(hyperparameters)], cwd=root,
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return child, log


def running_with_a_checkpoint(log: Path) -> tuple[str, int]:
    """The running job's id and the step of its first checkpoint, once it has one."""
    job = wait_for(
        "the job", lambda: [j for j in FineTune.list().jobs if j.status == "RUNNING"], log
    )
    job_id = job[0].id

    def checkpoint() -> int | None:
        try:
            key = f"fine-tunes/{job_id}/checkpoints/latest.json"
            return int(json.loads(get_store().get_bytes(key))["step"])
        except NotFoundError:
            return None

    return job_id, wait_for("a checkpoint", checkpoint, log)


def test_a_killed_in_process_fine_tune_is_crashed_and_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    child, log = start_job(tmp_path, HYPERPARAMETERS)
    try:
        job_id, saved = running_with_a_checkpoint(log)
        assert FineTune.get(job_id).status == "RUNNING"  # beating: not taken for dead
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert saved < 48, "the job ended before it was killed: nothing was tested"

    crashed = FineTune.get(job_id)
    assert crashed.status == "FAILURE"
    events = [e.message for e in FineTune.get_events(job_id).events]
    assert any("is no longer running" in m for m in events), events

    resumed = FineTune.resume(job_id)  # started from Python: it runs again here
    assert resumed.id == job_id and resumed.status == "SUCCESS"
    record = registry.read_record(resumed.fine_tuned_model)
    assert record.job_id == job_id and record.steps == 48
    assert record.resumed_from is not None and record.resumed_from >= saved
    with pytest.raises(LoraflowError, match="only a FAILURE resumes"):
        FineTune.resume(job_id)


def training_workers() -> list[int]:
    """Processes of launched fine-tunes still alive: `accelerate launch` and its workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"loraflow.training.worker" in command:
                found.append(int(entry.name))
    return found


def test_a_killed_two_process_fine_tune_stops_its_workers_and_resumes_once(
    tmp_path: Path,
) -> None:
    import mlflow

    from loraflow import tracking

    distributed = {**HYPERPARAMETERS, "batch_size": 2, "distributed": {"num_processes": 2}}
    child, log = start_job(tmp_path, distributed)
    try:
        job_id, saved = running_with_a_checkpoint(log)
        assert len(training_workers()) == 3  # accelerate launch, and its 2 processes on gloo
    finally:
        child.send_signal(signal.SIGKILL)  # the job's process: its workers are not told
        child.wait(timeout=30)
    assert saved < 48, "the job ended before it was killed: nothing was tested"
    wait_for("the workers to stop by themselves", lambda: not training_workers(), log, 60)

    assert FineTune.get(job_id).status == "FAILURE"
    resumed = FineTune.resume(job_id)  # from Python: trains here, on 2 processes again
    assert resumed.status == "SUCCESS"
    record = registry.read_record(resumed.fine_tuned_model)
    assert record.steps == 48 and record.resumed_from is not None
    assert record.resumed_from >= saved  # the workers' own last checkpoint counts too
    tracking.configure()
    runs = mlflow.search_runs(
        filter_string=f"tags.`loraflow.job_id` = '{job_id}'", output_format="list"
    )
    assert len(runs) == 1
    assert record.registered_model is not None
    versions = registry.versions_with(
        record.registered_model, registry.TAG_MODEL, record.fine_tuned_model
    )
    assert len(versions) == 1
