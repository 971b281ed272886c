"""The model registry: every successful fine-tune is a version of a registered MLflow model.

A fine-tuned model ``{base}.{suffix}.{YYMMDD-HHMMSS}`` is a version of the registered model
``{base}.{suffix}`` (its *family*), so the fine-tunes of one dataset line up as versions 1, 2, …
and an alias (``champion``) marks the one to serve. Any of these references resolves to one
fine-tuned model: its name, ``family@alias``, ``family/version``, each also with ``models:/``.

The serving side needs only the object store: ``models/<name>.json`` records where the adapter
is; MLflow is asked only to resolve aliases and versions and to keep lineage.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from typing import Any

from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.storage import get_store

STAMP = re.compile(r"\.\d{6}-\d{6}$")
NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
TAG_MODEL = "loraflow.fine_tuned_model"


def family(name: str) -> str:
    """The registered model a fine-tuned model is a version of: its name without the stamp."""
    return STAMP.sub("", name)


def record_key(name: str) -> str:
    return f"models/{name}.json"


def read_record(name: str) -> dict[str, Any]:
    """The stored record of a fine-tuned model. Raises NotFoundError."""
    check_name(name)
    try:
        return json.loads(get_store().get_bytes(record_key(name)))
    except NotFoundError:
        raise NotFoundError(f"The specified model could not be found: {name}") from None


def write_record(record: dict[str, Any]) -> None:
    data = json.dumps(record, indent=2, sort_keys=True).encode()
    get_store().put(record_key(record["fine_tuned_model"]), data)


def list_records() -> list[dict[str, Any]]:
    """Every fine-tuned model's record, oldest first."""
    store = get_store()
    records = []
    for info in store.list("models/"):
        if info.key.endswith(".json") and "/" not in info.key[len("models/") :]:
            records.append(json.loads(store.get_bytes(info.key)))
    return sorted(records, key=lambda r: r.get("created_at", ""))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequestError(
            f"model: {name!r} is not a model name; names use letters, digits and '._-' only"
        )
    return name


def _client() -> Any:
    from mlflow import MlflowClient

    from loraflow import tracking

    tracking.configure()
    return MlflowClient()


def register(record: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    """Register the fine-tune in ``record`` as a new version of its family, with ``tags``.

    Idempotent: a model already registered keeps its version. Returns the record with
    ``registered_model`` and ``version`` set, as written back to the store.
    """
    from mlflow.exceptions import MlflowException

    client, name = _client(), record["fine_tuned_model"]
    reg = family(name)
    try:
        client.get_registered_model(reg)
    except MlflowException:
        client.create_registered_model(
            reg, description=f"LoRA fine-tunes of {record['base_model']} (loraflow)"
        )
    found = client.search_model_versions(f"name = '{reg}' and tags.`{TAG_MODEL}` = '{name}'")
    if found:
        version = found[0]
    else:
        version = client.create_model_version(
            reg,
            source=record["model_uri"],
            run_id=record["mlflow_run_id"],
            tags={TAG_MODEL: name, **{k: str(v) for k, v in tags.items()}},
            description=f"fine-tune job {record['job_id']}",
        )
    record = record | {"registered_model": reg, "version": int(version.version)}
    write_record(record)
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


def aliases(record: dict[str, Any]) -> list[str]:
    """The aliases pointing at this fine-tune's registered version."""
    if "registered_model" not in record:
        return []
    version = _client().get_model_version(record["registered_model"], str(record["version"]))
    return sorted(version.aliases)


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


def set_alias(record: dict[str, Any], alias: str) -> None:
    _client().set_registered_model_alias(record["registered_model"], alias, str(record["version"]))


def version_tags(record: dict[str, Any]) -> dict[str, str]:
    """The tags of a registered fine-tune's version (lineage, evaluation, promotion)."""
    return dict(
        _client().get_model_version(record["registered_model"], str(record["version"])).tags
    )


def tag_version(record: dict[str, Any], tags: dict[str, str]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(record["registered_model"], str(record["version"]), key, value)


def delete(name: str) -> bool:
    """Delete a fine-tuned model: its registered version, record and adapter files.

    The MLflow run (metrics, lineage) stays. Returns False when there was nothing to delete.
    """
    from mlflow.exceptions import MlflowException

    try:
        record = read_record(name)
    except NotFoundError:
        return False
    if "registered_model" in record:  # already gone from the registry: the files still go
        with suppress(MlflowException):
            _client().delete_model_version(record["registered_model"], str(record["version"]))
    store = get_store()
    for info in list(store.list(record["adapter_prefix"] + "/")):
        store.delete(info.key)
    store.delete(record_key(name))
    return True
