"""Prefect tasks of the retrain pipeline: fetch the dataset, find the champion, mark lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from loraflow.retraining import Champion, Dataset
from loraflow.settings import get_settings
from tasks.validate import artifact_key

TAG_DATASET = "loraflow.dataset"
TAG_DATASET_SHA256 = "loraflow.dataset_sha256"


@task(name="fetch-dataset", tags=["loraflow", "data"], retries=2, retry_delay_seconds=5)
def fetch_dataset(location: str, work_dir: Path) -> Dataset:
    """Read the dataset at ``location`` (the newest file under a prefix) into ``work_dir``."""
    from loraflow import locations

    resolved = locations.newest(location, "dataset")
    data, name = locations.read(resolved, "dataset")
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / name
    path.write_bytes(data)
    dataset = Dataset(location=resolved, path=str(path), sha256=hashlib.sha256(data).hexdigest())
    get_run_logger().info(f"dataset {resolved}: {len(data):,} bytes, sha256 {dataset.sha256[:12]}")
    return dataset


@task(name="find-champion", tags=["loraflow", "registry"], cache_policy=NO_CACHE)
def find_champion(family: str, alias: str) -> Champion | None:
    """The model ``family@alias`` names and its training dataset; None when the alias is unset."""
    from loraflow import registry

    name = registry.alias_target(family, alias)
    if name is None:
        return None
    record = registry.read_record(name)
    tags = registry.version_tags(record)
    return Champion(
        model=name,
        version=int(record["version"]),
        dataset=tags.get(TAG_DATASET),
        dataset_sha256=tags.get(TAG_DATASET_SHA256),
    )


@task(name="tag-dataset", tags=["loraflow", "registry"], retries=2, cache_policy=NO_CACHE)
def tag_dataset(model: str, dataset: Dataset) -> None:
    """Record on ``model``'s registry version which dataset (location, sha256) it came from."""
    from loraflow import registry

    record = registry.read_record(model)
    registry.tag_version(
        record, {TAG_DATASET: dataset.location[:4000], TAG_DATASET_SHA256: dataset.sha256}
    )


def work_dir(flow_run_id: str) -> Path:
    """A scratch directory for one run under the loraflow home."""
    return get_settings().home / "tmp" / "retrain" / flow_run_id


def publish_summary(family: str, markdown: str, description: str) -> None:
    """The run's outcome as a markdown artifact keyed by the model family."""
    create_markdown_artifact(
        markdown=markdown, key=artifact_key("retrain", family), description=description
    )
