"""Where loraflow's jobs run: the Prefect work pool seam.

``configs/deployments.yaml`` names a work pool and its ``type``; ``loraflow deploy`` makes
sure a pool of that type exists with that type's base job template. The process pool (runs in
subprocesses of a worker on this machine) is the first member. Adding a place to run jobs
(e.g. Kubernetes) is one class meeting ``WorkPoolType`` and one line in ``POOL_TYPES``.
"""

from __future__ import annotations

from typing import Any, Protocol


class WorkPoolType(Protocol):
    """A kind of Prefect work pool loraflow can create and deploy to."""

    type: str  # Prefect's worker type, e.g. "process"

    def base_job_template(self) -> dict[str, Any]:
        """The job template the pool's runs start from."""
        ...


class ProcessPool:
    """Runs in subprocesses of a worker (``loraflow up`` starts one) on this machine."""

    type = "process"

    def base_job_template(self) -> dict[str, Any]:
        from prefect.workers.process import ProcessWorker

        template: dict[str, Any] = ProcessWorker.get_default_base_job_template()
        return template


POOL_TYPES: dict[str, WorkPoolType] = {"process": ProcessPool()}


def ensure_work_pool(client: Any, name: str, kind: str) -> None:
    """A work pool called ``name`` of type ``kind`` (kept as it is when it exists)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_pool(name)
    except ObjectNotFound:
        pool = POOL_TYPES[kind]
        client.create_work_pool(
            WorkPoolCreate(name=name, type=pool.type, base_job_template=pool.base_job_template())
        )
