"""Prefect tasks of the retrain pipeline: fetch the dataset, fingerprint the recipe, find the
champion and the versions trained on the same recipe, mark lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from loraflow.registry import TAG_DATASET, TAG_DATASET_SHA256, TAG_MODEL, TAG_PROMOTION, TAG_RECIPE
from loraflow.retraining import Champion, Dataset, Precedent, RetrainConfig, recipe_settings
from loraflow.settings import get_settings
from tasks.validate import artifact_key


@task(name="fetch-dataset", retries=2, retry_delay_seconds=5)
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


@task(name="find-champion", cache_policy=NO_CACHE)
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
        version=int(record.version or 0),
        dataset=tags.get(TAG_DATASET),
        dataset_sha256=tags.get(TAG_DATASET_SHA256),
    )


# Preparing the base model may download from a hub; a retry helps there.
@task(name="fingerprint-recipe", retries=2, retry_delay_seconds=10)
def fingerprint_recipe(config: RetrainConfig, dataset: Dataset) -> str:
    """The recipe fingerprint of training ``config.model`` on ``dataset`` as ``config`` says."""
    from loraflow.models import model_revision, prepare, resolve_model
    from loraflow.registry import recipe_fingerprint

    spec = resolve_model(config.model)
    revision = model_revision(prepare(spec))
    return recipe_fingerprint(dataset.sha256, spec.name, revision, recipe_settings(config))


@task(name="find-precedents", cache_policy=NO_CACHE)
def find_precedents(family: str, recipe: str, alias: str) -> list[Precedent]:
    """Every version of ``family`` trained on ``recipe``, with its gate's decision."""
    from loraflow import registry

    return [
        Precedent(
            model=v.tags[TAG_MODEL],
            version=int(v.version),
            decision=v.tags.get(f"{TAG_PROMOTION}{alias}.decision"),
        )
        for v in registry.versions_with(family, TAG_RECIPE, recipe)
    ]


@task(name="tag-lineage", retries=2, cache_policy=NO_CACHE)
def tag_lineage(model: str, dataset: Dataset, recipe: str) -> None:
    """Record on ``model``'s registry version the dataset it came from (location, sha256)
    and the recipe fingerprint."""
    from loraflow import registry

    record = registry.read_record(model)
    registry.tag_version(
        record,
        {
            TAG_DATASET: dataset.location[:4000],
            TAG_DATASET_SHA256: dataset.sha256,
            TAG_RECIPE: recipe,
        },
    )


def work_dir(flow_run_id: str) -> Path:
    """A scratch directory for one run under the loraflow home."""
    return get_settings().home / "tmp" / "retrain" / flow_run_id


def publish_summary(family: str, markdown: str, description: str) -> None:
    """The run's outcome as a markdown artifact keyed by the model family."""
    create_markdown_artifact(
        markdown=markdown, key=artifact_key("retrain", family), description=description
    )
