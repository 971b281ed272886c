"""Where loraflow's jobs run: the Prefect work pool seam.

``configs/deployments.yaml`` names a work pool and its ``type``; ``loraflow deploy`` makes
sure a pool of that type exists with that type's base job template (and brings the template
up to date when the config changed). Members: the process pool (runs in subprocesses of a
worker on this machine) and the Kubernetes pool (each run a Kubernetes Job, from
prefect-kubernetes' template with loraflow's image, resources, GPUs, Secret, node selector and
tolerations). Adding a place to run jobs is one class meeting ``WorkPoolType`` and one line in
``POOL_TYPES``.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field


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


class KubernetesConfig(BaseModel):
    """The ``kubernetes`` section of configs/deployments.yaml: what each job's pod gets."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(
        "loraflow:cpu", description="The job image (the repo's Dockerfile builds it)."
    )
    namespace: str = Field("default", description="Where the jobs run.")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu each job requests (0: none).")
    cpu: str = Field("2", description="CPU each job requests, as Kubernetes writes it.")
    memory: str = Field("8Gi", description="Memory each job requests (and is limited to).")
    secret: str | None = Field(
        "loraflow-settings",
        description="A Secret whose keys become the job's environment: LORAFLOW_S3_*, "
        "LORAFLOW_STORAGE_URI, LORAFLOW_MLFLOW_TRACKING_URI... (null: none).",
    )
    node_selector: dict[str, str] = Field({}, description="Node labels the pods need.")
    tolerations: list[dict[str, Any]] = Field([], description="Taints the pods tolerate.")
    service_account: str | None = Field(None, description="The pods' service account.")


class KubernetesPool:
    """Each run is a Kubernetes Job a prefect-kubernetes worker submits."""

    type = "kubernetes"

    def __init__(self, config: KubernetesConfig | None = None) -> None:
        self.config = config or KubernetesConfig()

    def base_job_template(self) -> dict[str, Any]:
        from prefect_kubernetes.worker import KubernetesWorker

        c = self.config
        template: dict[str, Any] = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
        variables = template["variables"]["properties"]
        variables["image"]["default"] = c.image
        variables["namespace"]["default"] = c.namespace
        if c.service_account:
            variables["service_account_name"]["default"] = c.service_account
        for name, value in (
            ("cpu_request", c.cpu),
            ("memory_request", c.memory),
            ("memory_limit", c.memory),
        ):
            variables[name]["default"] = value  # a deployment's job_variables may override
        job = template["job_configuration"]["job_manifest"]["spec"]
        pod = job["template"]["spec"]
        # prefect-kubernetes puts these Job fields in the pod spec, where Kubernetes drops them
        for field in ("completions", "parallelism"):
            if field in pod:
                job[field] = pod.pop(field)
        container = pod["containers"][0]
        if c.gpus:
            for part in ("requests", "limits"):
                container["resources"][part]["nvidia.com/gpu"] = str(c.gpus)
        if c.secret:
            container["envFrom"] = [{"secretRef": {"name": c.secret}}]
        if c.node_selector:
            pod["nodeSelector"] = dict(c.node_selector)
        if c.tolerations:
            pod["tolerations"] = [dict(t) for t in c.tolerations]
        return template


POOL_TYPES: dict[str, type[Any]] = {"process": ProcessPool, "kubernetes": KubernetesPool}


def pool_of(kind: str, kubernetes: KubernetesConfig | None = None) -> WorkPoolType:
    """The pool type ``kind`` as the config describes it."""
    if kind == "kubernetes":
        return KubernetesPool(kubernetes)
    pool: WorkPoolType = POOL_TYPES[kind]()
    return pool


def ensure_work_pool(client: Any, name: str, pool: WorkPoolType) -> None:
    """A work pool called ``name`` of ``pool``'s type with its base job template: created
    when missing, its template updated when the config changed it. A pool of another type
    under that name is a ConfigError naming work_pool."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    from loraflow.errors import ConfigError

    template = pool.base_job_template()
    try:
        found = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(
            WorkPoolCreate(name=name, type=pool.type, base_job_template=template)
        )
        return
    if found.type != pool.type:
        raise ConfigError(
            f"work_pool: the pool {name!r} is a {found.type} pool, not {pool.type}; name another "
            "pool in configs/deployments.yaml, or delete that one"
        )
    if found.base_job_template != template:
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
