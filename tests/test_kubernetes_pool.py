"""The Kubernetes work pool, as far as it can be tested without a cluster: the Job a
prefect-kubernetes worker would submit for a fine-tune is rendered from the pool's template
and validated against the Kubernetes API schema with the official client's models; GPUs,
image, environment, Secret, node selector and tolerations are where Kubernetes reads them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from deployments.build import load
from deployments.pools import KubernetesConfig, KubernetesPool, ensure_work_pool

GPU_JOB = KubernetesConfig(
    image="registry.example.com/loraflow:cuda",
    namespace="loraflow",
    gpus=2,
    cpu="8",
    memory="48Gi",
    secret="loraflow-settings",
    node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    service_account="loraflow-jobs",
)


def rendered_job(config: KubernetesConfig) -> dict[str, Any]:
    """The Job manifest a worker of this pool submits for a fine-tune flow run."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = KubernetesPool(config).base_job_template()
    job = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, {}))
    run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="ft-0123456789abcdefghij")
    job.prepare_for_flow_run(run)
    manifest: dict[str, Any] = job.job_manifest
    return manifest


def as_kubernetes_sees_it(manifest: dict[str, Any]) -> Any:
    """The manifest read into the official client's V1Job (which checks required fields and
    types), and written back: equal to the input only if every key is one Kubernetes knows."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    job = api._ApiClient__deserialize(manifest, "V1Job")  # type: ignore[attr-defined]
    assert api.sanitize_for_serialization(job) == strip_none(manifest)
    return job


def strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none(v) for v in value]
    return value


def test_a_gpu_fine_tune_job_is_a_valid_kubernetes_job_with_everything_in_place() -> None:
    manifest = rendered_job(GPU_JOB)
    job = as_kubernetes_sees_it(manifest)
    assert job.kind == "Job" and job.metadata.namespace == "loraflow"
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.image == "registry.example.com/loraflow:cuda"
    assert container.resources.limits == {"memory": "48Gi", "nvidia.com/gpu": "2"}
    assert container.resources.requests == {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "2"}
    assert [e.secret_ref.name for e in container.env_from] == ["loraflow-settings"]
    env = {e.name: e.value for e in container.env}
    assert env["PREFECT__FLOW_RUN_ID"]  # the worker tells the pod which run it is
    assert " ".join(container.args or container.command or []).count("prefect") >= 1
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    assert pod.service_account_name == "loraflow-jobs"
    assert pod.restart_policy == "Never"
    assert "secret" not in str(env).lower()  # no secret value in the manifest itself


def test_a_cpu_job_requests_no_gpu() -> None:
    job = as_kubernetes_sees_it(rendered_job(KubernetesConfig()))
    (container,) = job.spec.template.spec.containers
    assert "nvidia.com/gpu" not in container.resources.limits
    assert container.image == "loraflow:cpu"


def test_the_deployments_file_names_the_kubernetes_pool(tmp_path: Any) -> None:
    path = tmp_path / "deployments.yaml"
    original = load().model_dump(mode="json")
    original |= {"work_pool_type": "kubernetes", "kubernetes": {"gpus": 1, "image": "x:1"}}
    import yaml

    path.write_text(yaml.safe_dump(original))
    config = load(path)
    assert config.work_pool_type == "kubernetes" and config.kubernetes.gpus == 1
    original["kubernetes"]["gpu"] = 1  # a typo is named
    path.write_text(yaml.safe_dump(original))
    from loraflow.errors import ConfigError

    with pytest.raises(ConfigError, match=r"kubernetes\.gpu"):
        load(path)


@pytest.mark.usefixtures("prefect_harness")
def test_deploy_creates_the_kubernetes_pool_and_refuses_a_pool_of_another_type() -> None:
    from prefect.client.orchestration import get_client

    from deployments.pools import ProcessPool
    from loraflow.errors import ConfigError

    name = f"k8s-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        ensure_work_pool(client, name, KubernetesPool(GPU_JOB))
        pool = client.read_work_pool(name)
        assert pool.type == "kubernetes"
        assert pool.base_job_template == KubernetesPool(GPU_JOB).base_job_template()
        ensure_work_pool(client, name, KubernetesPool(KubernetesConfig(gpus=4)))  # updated
        limits = client.read_work_pool(name).base_job_template["job_configuration"]["job_manifest"][
            "spec"
        ]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "4"
        with pytest.raises(ConfigError, match="work_pool"):
            ensure_work_pool(client, name, ProcessPool())
    assert load().work_pool_type == "process"  # the shipped config keeps the process pool
