"""loraflow's Prefect deployments, built from ``configs/deployments.yaml``.

That file names the work pool, the device concurrency limit's slots, and per flow its schedules
and the YAML file holding its parameters; every value lives there or in the flows' config
models, never here. ``apply()`` (``make deploy``, ``loraflow deploy``) registers them with a
process work pool that ``loraflow up``'s worker serves; ``loraflow worker`` serves the same
deployments from its own process instead.

Each flow is deployed under the name ``loraflow.jobs.DEPLOYMENTS`` gives it (what it is for:
``fine-tune/train-lora-adapter``, ``retrain/nightly-or-ci``...): the names the SDK's job APIs
start runs of.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deployments.pools import KubernetesConfig, ensure_work_pool, pool_of
from flows import config_model
from loraflow.errors import ConfigError, field_problems
from loraflow.jobs import DEPLOYMENTS, DEVICE_LIMIT, LEGACY_DEPLOYMENT_NAME, deployment_name
from loraflow.settings import read_yaml

# flow name -> entrypoint, a module path: workers import the installed package from any cwd
FLOWS = {
    "ingest": "flows.ingest.ingest",
    "fine-tune": "flows.fine_tune.fine_tune",
    "promote": "flows.promote.promote",
    "batch-complete": "flows.batch_complete.batch_complete",
    "retrain": "flows.retrain.retrain",
}
CONFIG_NAME = "deployments.yaml"


class ScheduleConfig(BaseModel):
    """When a deployment runs by itself: a cron expression or an interval."""

    model_config = ConfigDict(extra="forbid")
    cron: str | None = Field(None, description="Cron expression, e.g. '0 2 * * *'.")
    interval_seconds: float | None = Field(None, gt=0, description="Or: every this many s.")
    timezone: str = Field("UTC", description="IANA timezone of the cron expression.")
    active: bool = Field(True, description="Paused schedules keep their definition.")

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleConfig:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron and interval_seconds")
        return self

    def to_prefect(self) -> Any:
        from prefect.schedules import Cron, Interval

        if self.cron is not None:
            return Cron(self.cron, timezone=self.timezone, active=self.active)
        return Interval(self.interval_seconds, timezone=self.timezone, active=self.active)


class DeploymentConfig(BaseModel):
    """One flow's deployment."""

    model_config = ConfigDict(extra="forbid")
    parameters: str | None = Field(
        None, description="YAML file (beside this one) with the flow's config; unset: defaults."
    )
    schedules: list[ScheduleConfig] = Field([], description="When it runs by itself.")
    concurrency_limit: int | None = Field(
        None, ge=1, description="Runs of this deployment at once; more wait their turn."
    )


class DeploymentsConfig(BaseModel):
    """configs/deployments.yaml."""

    model_config = ConfigDict(extra="forbid")
    work_pool: str = Field("loraflow", description="The work pool runs go to.")
    work_pool_type: Literal["process", "kubernetes"] = Field(
        "process",
        description="process: a worker's subprocesses on its machine; kubernetes: a "
        "Kubernetes Job per run (the kubernetes section says what its pod gets).",
    )
    kubernetes: KubernetesConfig = Field(
        KubernetesConfig(), description="The Kubernetes pool's jobs: image, GPUs, Secret..."
    )
    device_slots: int = Field(1, ge=1, description="Fine-tunes that may train at once.")
    deployments: dict[str, DeploymentConfig] = Field(
        {}, description="Per flow name; every flow loraflow has must be listed."
    )

    @model_validator(mode="after")
    def _every_flow(self) -> DeploymentsConfig:
        unknown, missing = set(self.deployments) - set(FLOWS), set(FLOWS) - set(self.deployments)
        if unknown or missing:
            raise ValueError(
                f"deployments: unknown {sorted(unknown)}, missing {sorted(missing)}; "
                f"the flows are {sorted(FLOWS)}"
            )
        return self


def default_path() -> Path:
    """configs/deployments.yaml of the working directory, else of the loraflow checkout."""
    here = Path("configs") / CONFIG_NAME
    return here if here.is_file() else Path(__file__).resolve().parents[1] / "configs" / CONFIG_NAME


def load(path: Path | None = None) -> DeploymentsConfig:
    """Read and check the deployments file; ConfigError names the file and the field."""
    path = path or default_path()
    try:
        return DeploymentsConfig.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {field_problems(exc, '(top)')}") from None


def flow_of(name: str) -> Any:
    module, _, attr = FLOWS[name].rpartition(".")
    return getattr(importlib.import_module(module), attr)


def parameters(name: str, spec: DeploymentConfig, folder: Path) -> dict[str, Any]:
    """The deployment's parameters: its YAML file checked against the flow's config model."""
    model = config_model(flow_of(name))
    if spec.parameters is None:
        try:
            return {"config": model().model_dump(mode="json")}
        except ValidationError:  # a required field (a fine-tune's training file): none
            return {}
    path = folder / spec.parameters
    try:
        return {"config": model.model_validate(read_yaml(path)).model_dump(mode="json")}
    except ValidationError as exc:
        raise ConfigError(f"{path}: {field_problems(exc, '(top)')}") from None


def build(config: DeploymentsConfig | None = None, path: Path | None = None) -> list[Any]:
    """Prefect RunnerDeployments of every flow, as the config describes them."""
    from prefect.deployments.runner import EntrypointType

    path = path or default_path()
    config = config or load(path)
    return [
        flow_of(name).to_deployment(
            name=DEPLOYMENTS[name],
            parameters=parameters(name, spec, path.parent),
            schedules=[s.to_prefect() for s in spec.schedules],
            concurrency_limit=spec.concurrency_limit,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for name, spec in config.deployments.items()
    ]


def apply(path: Path | None = None) -> list[str]:
    """Register every deployment with the process work pool, creating the pool and the
    device concurrency limit as needed. Idempotent: re-applying updates in place."""
    from prefect.client.orchestration import get_client

    path = path or default_path()
    config = load(path)
    built = build(config, path)
    with get_client(sync_client=True) as client:
        ensure_work_pool(
            client, config.work_pool, pool_of(config.work_pool_type, config.kubernetes)
        )
        ensure_device_limit(client, config.device_slots)
        for deployment in built:
            deployment_id = deployment.apply(work_pool_name=config.work_pool)
            if not deployment.schedules:
                drop_schedules(client, deployment_id)
        drop_legacy(client)
    return [d.full_name for d in built]


def drop_legacy(client: Any) -> None:
    """Delete the ``<flow>/loraflow`` deployments an earlier loraflow made, so their schedules
    (a second nightly retrain) stop."""
    from prefect.exceptions import ObjectNotFound

    for name in FLOWS:
        try:
            old = client.read_deployment_by_name(f"{name}/{LEGACY_DEPLOYMENT_NAME}")
        except ObjectNotFound:
            continue
        client.delete_deployment(old.id)


def live_schedules(path: Path | None = None) -> list[str]:
    """A line for each active schedule in the deployments config: which deployment, when,
    and how to pause it."""
    path = path or default_path()
    lines = []
    for name, spec in load(path).deployments.items():
        for schedule in spec.schedules:
            if not schedule.active:
                continue
            when = (
                f"cron {schedule.cron!r} ({schedule.timezone})"
                if schedule.cron
                else f"every {schedule.interval_seconds:g} s"
            )
            full = deployment_name(name)
            lines.append(
                f"schedule: {full} runs by itself, {when}; pause it with "
                f"`prefect deployment schedule pause {full} --all` (or `active: false` in "
                f"{path.name}, then `loraflow deploy`)"
            )
    return lines


def drop_schedules(client: Any, deployment_id: Any) -> None:
    """Remove a deployment's schedules (applying a deployment without any keeps the old)."""
    for schedule in client.read_deployment_schedules(deployment_id):
        client.delete_deployment_schedule(deployment_id, schedule.id)


def ensure_device_limit(client: Any, slots: int) -> None:
    """The global concurrency limit training holds a slot of, with ``slots`` slots."""
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_global_concurrency_limit_by_name(DEVICE_LIMIT)
    except ObjectNotFound:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=DEVICE_LIMIT, limit=slots)
        )
        return
    if found.limit != slots or not found.active:
        client.update_global_concurrency_limit(
            DEVICE_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
        )
