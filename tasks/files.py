"""Tasks: split a dataset and store files in the object store."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from loraflow.data import validate
from loraflow.data.split import split_frame, write_dataset
from loraflow.files import FileRecord, FileRepository
from loraflow.settings import ValidationConfig, get_settings


class SplitPaths(BaseModel):
    training: Path
    validation: Path


@task(name="split-dataset", tags=["loraflow", "data"])
def split_dataset(
    path: Path, fraction: float, seed: int, out_dir: Path, limits: ValidationConfig | None = None
) -> SplitPaths:
    """Write a seeded train/validation split of ``path`` into ``out_dir``."""
    dataset = validate(path, config=limits or get_settings().validation).raise_for_errors()
    train, val = split_frame(dataset.frame, fraction, seed)
    stem = path.name.rsplit(".", 1)[0]
    return SplitPaths(
        training=write_dataset(train, out_dir / f"{stem}.train.csv"),
        validation=write_dataset(val, out_dir / f"{stem}.validation.csv"),
    )


# Storage can fail transiently; a failed upload leaves nothing, so retrying is safe.
@task(
    name="upload-file",
    tags=["loraflow", "storage"],
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
)
def upload_file(path: Path, filename: str | None = None) -> FileRecord:
    """Validate and store ``path``; returns its record (id, sha256, rows...)."""
    return FileRepository.from_settings().upload(path, filename=filename)
