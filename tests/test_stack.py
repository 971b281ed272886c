"""The local stack on real parts: `loraflow up` starts a Prefect server (SQLite), a process
worker, the MLflow UI and `loraflow serve` on loopback; deployments from configs/ run there
(the nightly cron and a near-term schedule produce runs); two fine-tunes take turns on the
device; `loraflow down` stops only what `up` started. The README's own commands run on a stack
in tests/test_readme.py."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import free_port
from tests.helpers import SUPPORT_CSV, stack_env, write

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ["prefect", "worker", "mlflow", "serve"]
pytestmark = pytest.mark.slow


@dataclass
class Stack:
    env: dict[str, str]
    home: Path
    api_url: str
    configs: Path
    up_output: str = ""

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deployments.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A Prefect client of the stack's server."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: self.api_url}),
            get_client(sync_client=True) as client,
        ):
            yield client

    def pids(self) -> dict[str, int]:
        folder = self.home / "stack"
        return {
            name: json.loads((folder / f"{name}.pid").read_text())["pid"]
            for name in SERVICES
            if (folder / f"{name}.pid").exists()
        }

    def deploy(self, retrain: str, ingest_schedules: str = "[]") -> None:
        flows = "".join(f"  {f}: {{}}\n" for f in ("fine-tune", "promote"))
        body = (
            f"deployments:\n  ingest:\n    schedules: {ingest_schedules}\n{flows}"
            "  batch-complete: {}\n  retrain:\n    parameters: retrain.yaml\n"
            "    concurrency_limit: 1\n"
        )
        write(self.configs, "deployments.yaml", body)
        write(self.configs, "retrain.yaml", retrain)
        done = self.cli("deploy", "--config", str(self.configs / "deployments.yaml"))
        assert done.returncode == 0, done.stderr


HEAVY_IMPORTS_OF_STATUS = """
import sys
from deployments.cli import main

sys.argv = ["loraflow", "status"]
try:
    main()
except SystemExit as exit:
    print(exit.code or 0)
print(sorted({m.split(".")[0] for m in sys.modules} & {"prefect", "torch", "mlflow", "boto3"}))
"""
TINY = """\
dataset: builtin:customer_support.csv
model: tiny-llama-test
suffix: stack
hyperparameters: {epochs: 1, batch_size: 8, lr: 0.01}
validation_fraction: 0.2
gate: {max_examples: 8, max_new_tokens: 4}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack-home")
    ports = {name: free_port() for name in ("PREFECT", "MLFLOW", "SERVE")}
    env = stack_env(
        home,
        ports,
        LORAFLOW_MODELS_DIR=str(models_dir),
        # the test cannot wait the default minute for the scheduler or 10 s per worker poll
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_WORKER_QUERY_SECONDS="2",
    )
    stack = Stack(
        env, home, f"http://127.0.0.1:{ports['PREFECT']}/api", tmp_path_factory.mktemp("cfg")
    )
    started = stack.cli("up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        stack.up_output = started.stdout
        yield stack
    finally:
        stack.cli("down")


def test_up_starts_every_service_healthy_and_again_changes_nothing(stack: Stack) -> None:
    for name in SERVICES:
        assert f"{name}: started" in stack.up_output
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 4
    # status answers in well under 2 s: no heavy import (Prefect's client alone takes seconds)
    heavy = subprocess.run(
        [sys.executable, "-c", HEAVY_IMPORTS_OF_STATUS],
        cwd=ROOT,
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert heavy.stdout.splitlines()[-2:] == ["0", "[]"], heavy.stdout + heavy.stderr
    pids = stack.pids()
    again = stack.cli("up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 4
    assert stack.pids() == pids

    # `loraflow complete` goes to the stack's serve, with the stack's key, instead of loading
    served = stack.cli("complete", "tiny-llama-test", "Hi", "--max-new-tokens", "4")
    assert served.returncode == 0, served.stderr
    assert f"via http://127.0.0.1:{stack.env['LORAFLOW_STACK__SERVE_PORT']}" in served.stderr

    key_file = stack.home / "stack" / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    assert key in stack.up_output and key not in again.stdout  # shown once
    for log in (stack.home / "stack").glob("*.log"):
        assert key not in log.read_text(errors="replace"), f"the API key leaked into {log.name}"


def test_deployments_pool_limit_and_nightly_schedule_on_the_server(stack: Stack) -> None:
    with stack.client() as client:
        deployment = client.read_deployment_by_name("retrain/nightly-or-ci")
        assert deployment.work_pool_name == "loraflow"
        assert client.read_work_pool("loraflow").type == "process"
        limit = client.read_global_concurrency_limit_by_name("loraflow-device")
        assert limit.limit == 1 and limit.active
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "0 2 * * *"
        deadline = time.monotonic() + 60
        while not (runs := _runs(client, deployment.id)) and time.monotonic() < deadline:
            time.sleep(1)
    assert runs, "the scheduler made no runs of the nightly cron schedule"
    assert {r.expected_start_time.hour for r in runs} == {2}
    assert {r.state.type.value for r in runs} == {"SCHEDULED"}


def test_deploy_replaces_old_names_and_retrain_refuses_bad_input_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    """The outcomes of `loraflow retrain --wait` (promoted 0, unchanged 0, rejected 3) run on a
    stack's worker in tests/test_readme.py, from the README's own transcript."""
    from prefect.exceptions import ObjectNotFound

    with stack.client() as client:  # what an earlier loraflow deployed: deploy removes it
        client.create_deployment(client.create_flow_from_name("retrain"), "loraflow")
    stack.deploy(TINY)
    with stack.client() as client:
        assert client.read_deployment_by_name("retrain/nightly-or-ci").schedules == []
        with pytest.raises(ObjectNotFound):
            client.read_deployment_by_name("retrain/loraflow")

    missing = stack.cli("retrain", "--wait", "--dataset", str(tmp_path / "gone.csv"))
    assert missing.returncode == 1 and "no file at" in missing.stderr, missing.stderr
    bad = stack.cli("retrain", "--set", "gate.metric=accuracy")
    assert bad.returncode == 1 and "gate.metric" in bad.stderr


def test_two_fine_tunes_started_together_take_turns_on_the_device(
    stack: Stack, tmp_path: Path
) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    lines = SUPPORT_CSV.read_text().splitlines()
    data = write(tmp_path, "slot.csv", "\n".join(lines[:41]) + "\n")
    uploaded = stack.cli("files", "upload", str(data))
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = uploaded.stdout.strip()
    jobs = []
    for suffix in ("slot-a", "slot-b"):
        made = stack.cli(
            "fine-tunes", "create", file_id, "--model", "tiny-llama-test", "--suffix", suffix,
            "-p", '{"epochs": 2, "batch_size": 4}',
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        jobs.append(made.stdout.strip())
    for job in jobs:
        waited = stack.cli("fine-tunes", "wait", job)
        assert waited.returncode == 0, waited.stdout + waited.stderr

    def moments(client: Any, run: Any) -> tuple[Any, Any]:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        held = next(log.timestamp for log in logs if "holding a 'loraflow-device'" in log.message)
        released = next(
            log.timestamp for log in logs if "releasing the 'loraflow-device'" in log.message
        )
        return held, released

    with stack.client() as client:
        runs = [r for r in client.read_flow_runs() if r.name in jobs]
        (_, first_released), (second_held, _) = sorted(moments(client, r) for r in runs)
        spans = sorted((r.start_time, r.end_time) for r in runs)
    assert spans[1][0] < spans[0][1], "the two runs did not overlap: nothing was tested"
    assert second_held >= first_released, "both fine-tunes trained at once"


def test_a_near_term_schedule_produces_a_run_on_the_worker(stack: Stack) -> None:
    stack.deploy(TINY, ingest_schedules="[{interval_seconds: 10}]")  # the quickest flow
    with stack.client() as client:
        deployment = client.read_deployment_by_name("ingest/validate-and-store")
        deadline = time.monotonic() + 240
        done: list[Any] = []
        while not done and time.monotonic() < deadline:
            time.sleep(2)
            done = [r for r in _runs(client, deployment.id) if r.state.is_final()]
    stack.deploy(TINY)  # no schedule: no more runs
    assert done, "no scheduled run finished"
    assert done[0].state.type.value == "COMPLETED", done[0].state.message
    assert done[0].state.name == "Completed"


def test_down_stops_only_what_up_started(stack: Stack) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        pids = stack.pids()
        assert sorted(pids) == sorted(SERVICES)
        down = stack.cli("down")
        assert down.returncode == 0, down.stderr
        assert down.stdout.count("stopped") == 4
        for pid in pids.values():
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        for name in ("PREFECT", "MLFLOW", "SERVE"):
            port = int(stack.env[f"LORAFLOW_STACK__{name}_PORT"])
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listens"
        # a PID file naming some other process (a reused PID) is not obeyed
        fake = {"pid": bystander.pid, "started": 1.0, "command": ["prefect"]}
        (stack.home / "stack" / "prefect.pid").write_text(json.dumps(fake))
        again = stack.cli("down")
        assert again.stdout.count("not running") == 4
        assert bystander.poll() is None
        assert stack.cli("status").returncode == 1
        # with the stack down, the embedded defaults read the stack's history
        listed = stack.cli("fine-tunes", "list")
        assert listed.returncode == 0, listed.stderr
        jobs = set(re.findall(r"ft-[a-z0-9]{20}", listed.stdout))
        assert len(jobs) >= 2, listed.stdout  # the two that took turns, the retrains'...
    finally:
        bystander.kill()


def test_up_refuses_a_port_another_program_holds(stack: Stack, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        other = Stack(
            stack.env | {"LORAFLOW_HOME": str(tmp_path), "LORAFLOW_STACK__PREFECT_PORT": str(port)},
            tmp_path,
            f"http://127.0.0.1:{port}/api",
            tmp_path,
        )
        refused = other.cli("up")
    assert refused.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in refused.stderr
    assert not list((tmp_path / "stack").glob("*.pid"))


def _runs(client: Any, deployment_id: Any) -> list[Any]:
    """The runs the scheduler made for a deployment."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    )
    return [r for r in runs if r.auto_scheduled]
