"""The model registry: every successful fine-tune is a version of a registered MLflow model.

A fine-tuned model ``{base}.{suffix}.{YYMMDD-HHMMSS}`` is a version of the registered model
``{base}.{suffix}`` (its *family*), so the fine-tunes of one dataset line up as versions 1, 2, …
and an alias (``champion``) marks the one to serve. Any of these references resolves to one
fine-tuned model: its name, ``family@alias``, ``family/version``, each also with ``models:/``.

The serving side needs only the object store: ``models/<name>.json`` holds the fine-tune's
``ModelRecord`` (where the adapter is, and its whole lineage); MLflow is asked only to resolve
aliases and versions and to keep tags. ``register`` is the one writer of records.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from loraflow.errors import InvalidRequestError, NotFoundError, UnavailableError, shorten
from loraflow.storage import get_store
from loraflow.types import MODEL_NAME, Provenance

STAMP = re.compile(r"\.\d{6}-\d{6}$")
NAME = re.compile(rf"^{MODEL_NAME}$")
TAG_MODEL = "loraflow.fine_tuned_model"
TAG_RECIPE = "loraflow.recipe"
TAG_DATASET = "loraflow.dataset"  # what a retrain read (a prefix resolves to its newest file)
TAG_DATASET_SHA256 = "loraflow.dataset_sha256"
TAG_PROMOTION = "loraflow.promotion."  # + alias + .decision / .reason / .against
# the lineage a registered version carries as tags, from its record
LINEAGE_TAGS = (
    "job_id",
    "base_model",
    "base_revision",
    "training_file",
    "training_sha256",
    "validation_file",
    "validation_sha256",
    "mlflow_run_id",
    "steps",
    "train_loss",
    "eval_loss",
    "loraflow_version",
    "code_commit",
)


class ModelRecord(Provenance):
    """A fine-tune: what it is, where its adapter is, and everything it came from.

    Training makes one (unregistered); ``register`` stores it with its registry version.
    """

    fine_tuned_model: str
    adapter_prefix: str = Field(description="Object-store prefix of the peft adapter files.")
    model_uri: str = Field(description="The MLflow pyfunc model (adapter + base reference).")
    steps: int
    resumed_from: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    registered_model: str | None = None
    version: int | None = None

    @property
    def metrics(self) -> dict[str, float]:
        found = {"train_loss": self.train_loss, "eval_loss": self.eval_loss}
        return {k: v for k, v in found.items() if v is not None}

    def lineage_tags(self) -> dict[str, str]:
        """The tags its registered version carries: data, base, runs and metrics."""
        tags = {
            f"loraflow.{k}": str(getattr(self, k))
            for k in LINEAGE_TAGS
            if getattr(self, k) not in (None, "")
        }
        if self.prefect_flow_run_id:
            tags["prefect.flow_run_id"] = self.prefect_flow_run_id
        return tags


def recipe_fingerprint(
    dataset_sha256: str, base_model: str, base_revision: str, settings: dict[str, Any]
) -> str:
    """A digest of everything that decides a fine-tune's outcome: the data, the base model and
    revision, the hyperparameters and split (``settings``), and loraflow's version."""
    from loraflow import __version__

    recipe = {
        "dataset_sha256": dataset_sha256,
        "base_model": base_model,
        "base_revision": base_revision,
        "settings": settings,
        "loraflow": __version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def family(name: str) -> str:
    """The registered model a fine-tuned model is a version of: its name without the stamp."""
    return STAMP.sub("", name)


def record_key(name: str) -> str:
    return f"models/{name}.json"


def read_record(name: str) -> ModelRecord:
    """The stored record of a fine-tuned model. Raises NotFoundError."""
    check_name(name)
    try:
        return ModelRecord.model_validate_json(get_store().get_bytes(record_key(name)))
    except NotFoundError:
        raise NotFoundError(f"The specified model could not be found: {name}") from None


def list_records() -> list[ModelRecord]:
    """Every fine-tuned model's record, oldest first."""
    store = get_store()
    records = [
        ModelRecord.model_validate_json(store.get_bytes(info.key))
        for info in store.list("models/")
        if info.key.endswith(".json") and "/" not in info.key[len("models/") :]
    ]
    return sorted(records, key=lambda r: r.created_at)


def champions() -> list[str]:
    """``family@champion`` of every family whose champion alias is set."""
    families = sorted({family(r.fine_tuned_model) for r in list_records()})
    return [f"{f}@champion" for f in families if alias_target(f, "champion")]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequestError(
            f"model: {shorten(str(name))!r} is not a model name; names use letters, digits and "
            "'._-' only, at most 128 of them"
        )
    return name


def _client() -> Any:
    from mlflow import MlflowClient

    from loraflow import tracking

    tracking.configure()
    return MlflowClient()


def register(record: ModelRecord) -> ModelRecord:
    """Register a trained fine-tune as a new version of its family, tagged with its lineage,
    and store its record: the one place records are written.

    Idempotent: a model already registered keeps its version. Returns the stored record.
    """
    from mlflow.exceptions import MlflowException

    client, name = _client(), record.fine_tuned_model
    reg = family(name)
    try:
        client.get_registered_model(reg)
    except MlflowException:
        client.create_registered_model(
            reg, description=f"LoRA fine-tunes of {record.base_model} (loraflow)"
        )
    found = client.search_model_versions(f"name = '{reg}' and tags.`{TAG_MODEL}` = '{name}'")
    if found:
        version = found[0]
    else:
        version = client.create_model_version(
            reg,
            source=record.model_uri,
            run_id=record.mlflow_run_id,
            tags={TAG_MODEL: name, **record.lineage_tags()},
            description=f"fine-tune job {record.job_id}",
        )
    record = record.model_copy(update={"registered_model": reg, "version": int(version.version)})
    get_store().put(record_key(name), record.model_dump_json(indent=2).encode())
    return record


def resolve(reference: str) -> str:
    """The fine-tuned model name a reference points at (name, family@alias, family/version).

    Raises NotFoundError for an unknown model, alias or version; InvalidRequestError for a
    malformed reference.
    """
    from mlflow.exceptions import MlflowException

    ref = reference.removeprefix("models:/")
    if "@" not in ref and "/" not in ref:
        check_name(ref)
        return ref
    reg, sep, which = ref.partition("@") if "@" in ref else ref.partition("/")
    check_name(reg)
    if not which or (sep == "/" and not which.isdigit()):
        raise InvalidRequestError(
            f"model: {reference!r} is not a reference; use NAME, NAME@ALIAS or NAME/VERSION"
        )
    client = _client()
    try:
        if sep == "@":
            version = client.get_model_version_by_alias(reg, which)
        else:
            version = client.get_model_version(reg, which)
    except MlflowException:
        raise NotFoundError(f"The specified model could not be found: {reference}") from None
    return version.tags[TAG_MODEL]


def served_by(reference: str) -> tuple[str, ModelRecord | None]:
    """The base model that serves a model reference (a base of the zoo, a fine-tune's name,
    ``family@alias``, ``family/version``) and the fine-tune's record (None for a base model).
    Raises NotFoundError for an unknown model."""
    from loraflow.models import load_zoo

    if reference in load_zoo():
        return reference, None
    name = resolve(reference)
    try:
        record = read_record(name)
    except NotFoundError:
        raise NotFoundError(
            f"model: {reference!r} is neither a base model ({', '.join(load_zoo())}) nor a "
            "fine-tuned model; Model.list() shows what is served"
        ) from None
    return record.base_model, record


def check_base_revision(record: ModelRecord, served: str) -> None:
    """Refuse to serve a fine-tune on another revision of its base than it was trained on."""
    if served != record.base_revision:
        raise UnavailableError(
            f"{record.fine_tuned_model} was trained on {record.base_model} revision "
            f"{record.base_revision}, but this process serves revision {served}"
        )


def fetch_adapter(record: ModelRecord) -> Path:
    """A local copy of a fine-tune's adapter directory (peft's files), from the store into
    ``<home>/cache/adapters/<name>``; what a server loads."""
    from loraflow.settings import get_settings

    store = get_store()
    target = get_settings().home / "cache" / "adapters" / record.fine_tuned_model
    for info in store.list(record.adapter_prefix + "/"):
        store.download(info.key, target / info.key.rsplit("/", 1)[1])
    return target


def registered_version(record: ModelRecord) -> Any:
    """The MLflow model version of a registered fine-tune (aliases, tags), or None."""
    if record.registered_model is None:
        return None
    return _client().get_model_version(record.registered_model, str(record.version))


def versions_with(reg: str, tag: str, value: str) -> list[Any]:
    """The versions of family ``reg`` whose tag ``tag`` is ``value``, whatever became of them."""
    from mlflow.exceptions import MlflowException

    try:
        return list(_client().search_model_versions(f"name = '{reg}' and tags.`{tag}` = '{value}'"))
    except MlflowException:
        return []


def family_aliases(reg: str) -> dict[int, list[str]]:
    """Aliases of a registered model by version (empty when it is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client().get_registered_model(reg).aliases
    except MlflowException:
        return {}
    by_version: dict[int, list[str]] = {}
    for alias, version in sorted(found.items()):
        by_version.setdefault(int(version), []).append(alias)
    return by_version


def alias_target(reg: str, alias: str) -> str | None:
    """The fine-tuned model ``reg@alias`` points at, or None when the alias is not set."""
    try:
        return resolve(f"{reg}@{alias}")
    except NotFoundError:
        return None


def set_alias(record: ModelRecord, alias: str) -> None:
    _client().set_registered_model_alias(_registered(record), alias, str(record.version))


def version_tags(record: ModelRecord) -> dict[str, str]:
    """The tags of a registered fine-tune's version (lineage, evaluation, promotion)."""
    return dict(registered_version(record).tags) if record.registered_model else {}


def tag_version(record: ModelRecord, tags: dict[str, str]) -> None:
    client, reg = _client(), _registered(record)
    for key, value in tags.items():
        client.set_model_version_tag(reg, str(record.version), key, value)


def _registered(record: ModelRecord) -> str:
    if record.registered_model is None:
        raise InvalidRequestError(
            f"model: {record.fine_tuned_model} is not in the registry; register it first"
        )
    return record.registered_model


def delete(name: str) -> bool:
    """Delete a fine-tuned model: its registered version, record and adapter files.

    The MLflow run (metrics, lineage) stays. Returns False when there was nothing to delete.
    """
    from mlflow.exceptions import MlflowException

    try:
        record = read_record(name)
    except NotFoundError:
        return False
    if record.registered_model:  # already gone from the registry: the files still go
        with suppress(MlflowException):
            _client().delete_model_version(record.registered_model, str(record.version))
    store = get_store()
    for info in list(store.list(record.adapter_prefix + "/")):
        store.delete(info.key)
    store.delete(record_key(name))
    return True
