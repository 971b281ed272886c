"""Jobs: loraflow's long-running work (fine-tunes, batches, retrains) as Prefect flow runs.

One place for everything the SDK, the CLI and the flows need of them: which Prefect API to
talk to, job ids, starting, finding and cancelling a job's run, the Prefect state -> status
maps of LLM Engine's client, and one ``poll`` with the backoff of aiXplain's ``sync_poll``.
Prefect itself is imported only inside the functions that talk to it.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loraflow.errors import InvalidRequestError, LoraflowError, NotFoundError, UnavailableError
from loraflow.settings import Settings, get_settings
from loraflow.types import BatchStatus, FineTuneStatus

# The global concurrency limit every training holds one slot of: one device, one fine-tune.
DEVICE_LIMIT = "loraflow-device"
# Each flow's deployment, named for what it is for: the names job APIs start runs of.
DEPLOYMENTS = {
    "ingest": "validate-and-store",
    "fine-tune": "train-lora-adapter",
    "promote": "champion-gate",
    "batch-complete": "generate-to-jsonl",
    "retrain": "nightly-or-ci",
}
LEGACY_DEPLOYMENT_NAME = "loraflow"  # what every flow was deployed as once; apply removes it
STACK_DIR = "stack"  # under the home: `loraflow up` writes <service>.pid there
API_KEY_FILE = "api-key"  # in STACK_DIR: the stack's HTTP key when none is configured
EPHEMERAL_START_SECONDS = 120  # how long Prefect's ephemeral API may take to start (its own: 20)

T = TypeVar("T")

# The backoff of aiXplain's sync_poll: first wait, growth per poll, longest wait (seconds).
FIRST_WAIT, GROWTH, LONGEST_WAIT = 0.2, 1.1, 60.0


class JobTimeoutError(LoraflowError, TimeoutError):
    """Waiting ran out of time; the job itself goes on."""

    status = 504


# -- which Prefect API ---------------------------------------------------------------------


@contextmanager
def prefect_api(settings: Settings | None = None) -> Iterator[None]:
    """Within this block Prefect talks to ``settings.prefect_api_url`` when it is set.

    Unset, Prefect's own configuration applies (PREFECT_API_URL, profiles); failing that, the
    server of this home's stack when ``loraflow up`` runs it; else Prefect's ephemeral API on
    the stack's own database (``prefect_database``), so a user sees one history whether the
    stack ran or not (unless Prefect is configured with a database of its own). Entry points
    (the CLI, ``python -m flows.…``, the demo) and the SDK's job calls work within it.
    """
    updates = _prefect_updates(settings or get_settings())
    if not updates:
        yield
        return
    from prefect.settings import temporary_settings

    with temporary_settings(updates=updates):
        yield


def _prefect_updates(settings: Settings) -> dict[Any, Any]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
    )

    if settings.prefect_api_url:
        return {PREFECT_API_URL: settings.prefect_api_url}
    if PREFECT_API_URL.value():
        return {}
    if url := stack_api_url(settings):
        return {PREFECT_API_URL: url}
    server = get_current_settings().server
    updates: dict[Any, Any] = {}
    if "startup_timeout_seconds" not in server.ephemeral.model_fields_set:
        # Prefect waits 20 s for its ephemeral API, which a first start (making the database)
        # on a busy 2-core machine overran: the run failed before it began
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = EPHEMERAL_START_SECONDS
    if "connection_url" in server.database.model_fields_set:
        return updates
    database = prefect_database(settings)
    database.parent.mkdir(parents=True, exist_ok=True)
    return updates | {PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{database}"}


def prefect_database(settings: Settings) -> Path:
    """The SQLite file of this home's Prefect history: the stack's server keeps it, and
    Prefect's ephemeral API uses it while the stack is down."""
    return settings.home / STACK_DIR / "prefect" / "prefect.db"


def stack_api_url(settings: Settings) -> str | None:
    """The Prefect API of this home's stack while its server runs, else None."""
    return stack_url(settings, "prefect")


def stack_url(settings: Settings, service: str) -> str | None:
    """The URL a service of this home's stack serves while it runs (Prefect: its API)."""
    from loraflow import pidfile

    record = pidfile.read(settings.home / STACK_DIR / f"{service}.pid")
    return None if record is None else record.get("url")


def stack_api_key(settings: Settings) -> str | None:
    """A key the stack's HTTP service accepts: a configured one, else the one ``up`` made."""
    if settings.api_keys:
        return settings.api_keys[0].get_secret_value()
    path = settings.home / STACK_DIR / API_KEY_FILE
    return path.read_text().strip() if path.is_file() else None


@contextmanager
def prefect_client() -> Iterator[Any]:
    """A synchronous Prefect client of the API ``prefect_api`` chooses."""
    from prefect.client.orchestration import get_client

    with prefect_api(), get_client(sync_client=True) as client:
        yield client


# -- ids -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobIds:
    """Ids of one kind of job: ``<prefix>-`` and 20 lowercase letters or digits."""

    prefix: str
    kind: str  # how messages name the job: "fine-tune", "batch"

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.prefix)}-[a-z0-9]{{20}}$")

    def new(self) -> str:
        alphabet = string.ascii_lowercase + string.digits
        return f"{self.prefix}-" + "".join(secrets.choice(alphabet) for _ in range(20))

    def check(self, job_id: str) -> str:
        """``job_id`` itself; InvalidRequestError when it is not one of these ids."""
        if not isinstance(job_id, str) or not self.pattern.match(job_id):
            raise InvalidRequestError(
                f"{job_id!r} is not a {self.kind} job id; ids look like '{self.prefix}-' "
                "and 20 letters or digits"
            )
        return job_id


def job_identity(ids: JobIds, tag: str) -> str:
    """The job id of the running flow run: its name when a job API started it, else a new
    id that the run takes as its name (with ``tag``), so the job API finds it too."""
    from prefect.runtime import flow_run

    name = str(flow_run.name or "")
    if ids.pattern.match(name):
        return name
    job_id = ids.new()
    with prefect_client() as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, name=job_id, tags=sorted({*run.tags, tag}))
    return job_id


Parameters = dict[str, Any]


def pin_parameters(parameters: Parameters) -> None:
    """Store the running flow run's parameters as it completed them (e.g. a generated model
    name): the job API shows them, and a rerun of the same run uses them again."""
    from prefect.runtime import flow_run

    with prefect_client() as client:
        client.update_flow_run(flow_run.id, parameters=parameters)


# -- start, find, cancel -------------------------------------------------------------------


def read_deployment(client: Any, name: str) -> Any:
    """The deployment ``flow/name``; LoraflowError saying how to get one when it is missing."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise UnavailableError(
            f"no {name} deployment on the Prefect API at {client.api_url}: `make up` registers "
            "it and starts a worker (or `loraflow deploy` and a worker; or `loraflow worker`)"
        ) from None


def deployment_name(flow_name: str) -> str:
    """``<flow>/<deployment>``: the deployment of ``flow_name`` that loraflow's jobs run on."""
    return f"{flow_name}/{DEPLOYMENTS[flow_name]}"


def start_job(
    flow_name: str,
    parameters: Parameters | Callable[[Parameters], Parameters],
    name: str | None,
    tag: str,
) -> Any:
    """Start a run of ``flow_name``'s deployment (named ``name``, tagged ``tag``); a worker
    picks it up. ``parameters`` may be a function of the deployment's own parameters. Never
    waits; returns the flow run."""
    with prefect_client() as client:
        found = read_deployment(client, deployment_name(flow_name))
        if callable(parameters):
            parameters = parameters(found.parameters or {})
        return client.create_flow_run_from_deployment(
            found.id, parameters=parameters, name=name, tags=[tag]
        )


def find_job_run(client: Any, job_id: str, tag: str, kind: str) -> Any:
    """The flow run of job ``job_id``; raises NotFoundError naming the ``kind`` of job."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterTags

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[job_id]), tags=FlowRunFilterTags(all_=[tag])
        ),
        limit=1,
    )
    if not runs:
        raise NotFoundError(f"The specified {kind} job could not be found: {job_id}")
    return settle(client, runs[0])


def settle(client: Any, run: Any) -> Any:
    """``run``; or, when it is RUNNING but the process running it is gone (no heartbeat, see
    ``loraflow.heartbeat``), the run marked CRASHED with the reason, ready to resume."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from loraflow import heartbeat

    if run.state is None or run.state.type != StateType.RUNNING:
        return run
    started = run.state.timestamp.timestamp() if run.state.timestamp else None  # this attempt
    why = heartbeat.gone(run.name, started)
    if why is None:
        return run
    message = f"{run.name} crashed: {why}; resume continues from its last checkpoint"
    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return client.read_flow_run(run.id)


def rerun_here(client: Any, run: Any, entrypoint: str) -> Any:
    """Run a job's flow run again in this process, as the same run (same name, so the same
    job id and checkpoints); for runs that no deployment started. Returns its final state."""
    from prefect.flow_engine import run_flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect.states import AwaitingRetry

    client.set_flow_run_state(run.id, AwaitingRetry(), force=True)
    flow: Any = load_flow_from_entrypoint(entrypoint)
    return run_flow(flow, flow_run=client.read_flow_run(run.id), return_type="state")


def cancel_job_run(client: Any, run: Any) -> bool:
    """Ask a job's run to stop: one still waiting is cancelled outright, a running one is
    sent to CANCELLING (its worker stops it). False when it has already ended."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Cancelling

    state = run.state
    if state is not None and (state.is_final() or state.type == StateType.CANCELLING):
        return False
    waiting = state is None or state.type in {
        StateType.SCHEDULED,
        StateType.PENDING,
        StateType.PAUSED,
    }
    new: Any = Cancelled(message="cancelled before it started") if waiting else Cancelling()
    client.set_flow_run_state(run.id, new, force=True)
    return True


def is_cancelling(flow_run_id: Any) -> bool:
    """Whether someone asked Prefect to cancel this run (covers runs not under a runner)."""
    from prefect.client.schemas.objects import StateType

    with prefect_client() as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and state.type in {StateType.CANCELLING, StateType.CANCELLED}


# -- statuses ------------------------------------------------------------------------------


def fine_tune_status(state: Any) -> FineTuneStatus:
    """A Prefect state as LLM Engine's fine-tune status (waiting states are PENDING)."""
    from prefect.client.schemas.objects import StateType as S

    statuses: dict[Any, FineTuneStatus] = {
        S.RUNNING: "RUNNING",
        S.COMPLETED: "SUCCESS",
        S.FAILED: "FAILURE",
        S.CRASHED: "FAILURE",
        S.CANCELLING: "CANCELLED",
        S.CANCELLED: "CANCELLED",
    }
    return "PENDING" if state is None else statuses.get(state.type, "PENDING")


def batch_status(state: Any) -> BatchStatus:
    """A Prefect state as LLM Engine's batch job status."""
    return {  # type: ignore[return-value]
        "PENDING": "queued",
        "RUNNING": "running",
        "SUCCESS": "completed",
        "FAILURE": "failed",
        "CANCELLED": "cancelled",
    }[fine_tune_status(state)]


ENDED: frozenset[FineTuneStatus] = frozenset({"SUCCESS", "FAILURE", "CANCELLED"})


def ended(state: Any) -> bool:
    """Whether a run is done for a caller waiting on it: final, or being cancelled."""
    return fine_tune_status(state) in ENDED


# -- waiting -------------------------------------------------------------------------------


def poll(
    check: Callable[[], T | None],
    timeout: float | None,
    describe: Callable[[], str],
    first: float = FIRST_WAIT,
) -> T:
    """Call ``check`` until it returns something other than None, and return that.

    Waits ``first`` seconds (at least 0.2) after the first call, then 10 % longer each time,
    at most 60 s apart: aiXplain's ``sync_poll``. Raises JobTimeoutError with ``describe()``
    when the next wait would end after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = max(first, FIRST_WAIT)
    while True:
        found = check()
        if found is not None:
            return found
        if deadline is not None and time.monotonic() + delay > deadline:
            raise JobTimeoutError(f"{describe()} after {timeout} s")
        time.sleep(delay)
        delay = min(delay * GROWTH, LONGEST_WAIT)


def wait_run(flow_run_id: Any, timeout: float | None = None) -> Any:
    """Poll a flow run until it ends (see ``ended``); the final run. JobTimeoutError."""
    last: list[Any] = []

    def check() -> Any:
        with prefect_client() as client:
            run = client.read_flow_run(flow_run_id)
        last[:] = [run]
        return run if ended(run.state) else None

    return poll(check, timeout, lambda: f"run {last[0].name} is still {last[0].state_name}")
