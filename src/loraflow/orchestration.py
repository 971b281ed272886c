"""Connecting loraflow's entry points to the Prefect API its settings name."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from loraflow.errors import InvalidRequestError, LoraflowError, NotFoundError
from loraflow.settings import Settings, get_settings

# The global concurrency limit every training holds one slot of: one device, one fine-tune.
DEVICE_LIMIT = "loraflow-device"


@contextmanager
def prefect_api(settings: Settings | None = None) -> Iterator[None]:
    """Within this block Prefect talks to ``settings.prefect_api_url`` when it is set.

    Unset, Prefect's own configuration applies (PREFECT_API_URL, profiles); failing that, the
    server of this home's stack when ``loraflow up`` runs it; else Prefect's ephemeral API.
    Entry points (the CLI, ``python -m flows.…``) wrap their work in it.
    """
    settings = settings or get_settings()
    url = settings.prefect_api_url or _stack_api_url(settings)
    if not url:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _stack_api_url(settings: Settings) -> str | None:
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from loraflow.stack import Stack

    return Stack(settings).running_api_url()


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
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    name = str(flow_run.name or "")
    if ids.pattern.match(name):
        return name
    job_id = ids.new()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, name=job_id, tags=sorted({*run.tags, tag}))
    return job_id


def prefect_client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


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
    return runs[0]


def read_deployment(client: Any, name: str) -> Any:
    """The deployment ``flow/name``; LoraflowError saying how to get one when it is missing."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise LoraflowError(
            f"no {name} deployment on the Prefect API at {client.api_url}: `make up` registers "
            "it and starts a worker (or `loraflow deploy` and a worker; or `loraflow worker`)"
        ) from None


def start_job(deployment: str, parameters: dict[str, Any], job_id: str, tag: str) -> None:
    """Start a run of ``deployment`` named ``job_id``; a worker picks it up. Never waits."""
    with prefect_client() as client:
        found = read_deployment(client, deployment)
        client.create_flow_run_from_deployment(
            found.id, parameters=parameters, name=job_id, tags=[tag]
        )


def cancel_job_run(client: Any, run: Any) -> bool:
    """Ask a job's run to stop: one still waiting is cancelled outright, a running one is
    sent to CANCELLING (its worker stops it). False when it has already ended."""
    from prefect.states import Cancelled, Cancelling

    state = run.state.type.value if run.state else "PENDING"
    if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED", "CANCELLING"}:
        return False
    waiting = state in {"SCHEDULED", "PENDING", "PAUSED"}
    new = Cancelled(message="cancelled before it started") if waiting else Cancelling()
    client.set_flow_run_state(run.id, new, force=True)
    return True
