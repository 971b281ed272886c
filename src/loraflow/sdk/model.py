"""``Model``: the models loraflow serves (base models and fine-tunes), as LLM Engine's endpoints.

Every model is served in process on demand, so each one listed is READY. Fine-tunes carry
their registry version, aliases and metrics beyond LLM Engine's fields.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loraflow import __version__, registry
from loraflow.backends import framework
from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.models.zoo import load_zoo
from loraflow.registry import (
    TAG_DATASET,
    TAG_DATASET_SHA256,
    TAG_PROMOTION,
    ModelRecord,
)
from loraflow.sdk.types import (
    DeleteLLMEndpointResponse,
    GetLLMEndpointResponse,
    Lineage,
    ListLLMEndpointsResponse,
    ModelDownloadResponse,
)

TAG = f"loraflow-{__version__}"


def _base(name: str) -> GetLLMEndpointResponse:
    return GetLLMEndpointResponse(
        id=name,
        name=name,
        model_name=name,
        inference_framework=framework(),
        inference_framework_tag=TAG,
        base_model=name,
        fine_tuned=False,
        created_at=_prepared_at(name),
    )


def _prepared_at(name: str) -> datetime:
    """When a base model was prepared here (its weights converted or built), else when the
    zoo that names it was written."""
    from loraflow.models.prepare import MARKER, prepared_path
    from loraflow.models.zoo import resolve_model, zoo_file

    marker = prepared_path(resolve_model(name)) / MARKER
    source = marker if marker.is_file() else zoo_file()
    return datetime.fromtimestamp(source.stat().st_mtime, UTC)


def _fine_tuned(record: ModelRecord, aliases: list[str] | None = None) -> GetLLMEndpointResponse:
    return GetLLMEndpointResponse(
        id=record.fine_tuned_model,
        name=record.fine_tuned_model,
        model_name=record.base_model,
        inference_framework=framework(),
        inference_framework_tag=TAG,
        base_model=record.base_model,
        fine_tuned=True,
        created_at=record.created_at,
        job_id=record.job_id,
        registered_model=record.registered_model,
        version=record.version,
        aliases=aliases or [],
        metrics=record.metrics,
    )


def _lineage(record: ModelRecord, tags: dict[str, str]) -> Lineage:
    """The record's lineage, with what the registry version's tags add, and UI links."""
    from loraflow import jobs, tracking
    from loraflow.settings import get_settings

    links = {}
    settings = get_settings()
    prefect = jobs.stack_url(settings, "prefect")
    if prefect and record.prefect_flow_run_id:
        ui = prefect.removesuffix("/api")
        links["prefect_flow_run"] = f"{ui}/runs/flow-run/{record.prefect_flow_run_id}"
    mlflow_ui = jobs.stack_url(settings, "mlflow")
    if mlflow_ui:
        links["mlflow_run"] = tracking.run_url(record.mlflow_run_id, mlflow_ui, settings)
    return Lineage(
        **record.model_dump(include=set(Lineage.model_fields)),
        dataset=tags.get(TAG_DATASET),
        dataset_sha256=tags.get(TAG_DATASET_SHA256),
        recipe=tags.get(registry.TAG_RECIPE),
        promotion={k: v for k, v in tags.items() if k.startswith(TAG_PROMOTION)},
        links=links,
    )


class Model:
    """Served models. Every method is a classmethod, as in LLM Engine's client."""

    @classmethod
    def get(cls, model: str) -> GetLLMEndpointResponse:
        """A base model or fine-tune by name, ``family@alias`` or ``family/version``.

        Raises NotFoundError for an unknown model.
        """
        if model in load_zoo():
            return _base(model)
        record = registry.read_record(registry.resolve(model))
        version = registry.registered_version(record)
        aliases = sorted(version.aliases) if version is not None else []
        tags = dict(version.tags) if version is not None else {}
        return _fine_tuned(record, aliases).model_copy(update={"lineage": _lineage(record, tags)})

    @classmethod
    def list(cls) -> ListLLMEndpointsResponse:
        """The base models of the zoo, then every fine-tune, oldest first."""
        bases = [_base(name) for name in load_zoo()]
        tuned = [_fine_tuned(r) for r in registry.list_records()]
        by_family: dict[str, dict[int, list[str]]] = {}  # one registry query per family
        for item in tuned:
            if item.registered_model is not None:
                if item.registered_model not in by_family:
                    by_family[item.registered_model] = registry.family_aliases(
                        item.registered_model
                    )
                item.aliases = by_family[item.registered_model].get(item.version or 0, [])
        return ListLLMEndpointsResponse(model_endpoints=bases + tuned)

    @classmethod
    def delete(cls, model_endpoint_name: str) -> DeleteLLMEndpointResponse:
        """Delete a fine-tune: its registry version, adapter files and record.

        Base models cannot be deleted. Returns ``deleted=False`` for an unknown name. The
        fine-tune's MLflow run, with its metrics and lineage, stays.
        """
        from loraflow.backends import unload

        name = model_endpoint_name
        if name in load_zoo():
            raise InvalidRequestError(
                f"model_endpoint_name: {name} is a base model; only fine-tuned models can be "
                "deleted (remove a base model from configs/models.yaml)"
            )
        name = registry.resolve(name)
        deleted = registry.delete(name)
        unload(name)
        return DeleteLLMEndpointResponse(deleted=deleted)

    @classmethod
    def download(
        cls, model_name: str, download_format: str = "hugging_face"
    ) -> ModelDownloadResponse:
        """URLs of a fine-tune's files (the LoRA adapter in peft's Hugging Face format).

        On S3 they are presigned and expire in an hour; on a local store they are file URLs.
        Load them with ``PeftModel.from_pretrained(base, folder)``.
        """
        if download_format != "hugging_face":
            raise InvalidRequestError(
                f"download_format: only 'hugging_face' is supported (got {download_format!r})"
            )
        if model_name in load_zoo():
            raise NotFoundError(
                f"The requested fine-tuned model could not be found: {model_name} is a base model"
            )
        record = registry.read_record(registry.resolve(model_name))
        store = registry.get_store()
        prefix = record.adapter_prefix + "/"
        urls = {info.key[len(prefix) :]: store.url(info.key) for info in store.list(prefix)}
        return ModelDownloadResponse(urls=urls)
