"""Retraining: the config, outcomes and rules of the end-to-end pipeline (``flows/retrain.py``).

A retrain run takes a dataset, and unless a version of the family was already trained on the
same recipe (the dataset's bytes, the base model and revision, the hyperparameters and split,
loraflow's version), promoted or rejected, ingests it, fine-tunes, scores the candidate beside
the champion and promotes it if the gate says so. Its outcome is one of three words, which is
also the name of the run's final state (so the Prefect UI and ``loraflow retrain --wait``
read it without fetching results):

- ``promoted``: a new model took the alias;
- ``unchanged``: nothing to do, this recipe was trained before (it is the champion, or it
  was rejected: it would be again);
- ``rejected``: a candidate was trained but did not beat the champion.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraflow.fine_tuning import SUFFIX
from loraflow.promotion import Decision, Gate

FLOW_NAME = "retrain"
TAG = "loraflow-retrain"
Outcome = Literal["promoted", "unchanged", "rejected"]
# exit codes of `loraflow retrain --wait`: 0 when the model is as good as it gets
EXIT_CODES: dict[str, int] = {"promoted": 0, "unchanged": 0, "rejected": 3}
EXIT_RUN_FAILED = 1


class RetrainConfig(BaseModel):
    """One retrain: the data, the fine-tune to run on it, and the gate it must pass."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        "builtin:customer_support.csv",
        description="Training data: a file-… id, a path, s3://bucket/key, builtin:NAME (as "
        "the default), or a prefix ending in / (s3://bucket/incoming/, a directory) to take its "
        "newest .csv/.jsonl.",
    )
    model: str = Field("smollm2-135m-instruct", description="Base model to fine-tune.")
    suffix: str = Field(
        "retrain",
        pattern=SUFFIX.pattern,
        description="Model family MODEL.SUFFIX (up to 28 letters, digits, dashes); each "
        "run adds a version.",
    )
    hyperparameters: dict[str, Any] = Field(
        {}, description='LLM Engine hyperparameters, e.g. {"epochs": 2, "lr": 0.0002}.'
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of rows held out to score candidate and champion."
    )
    seed: int = Field(42, description="Seed of the train/validation split.")
    gate: Gate = Field(Gate(), description="When the candidate takes the alias.")
    force: bool = Field(
        False, description="Retrain even when the champion was trained on this same dataset."
    )


class Dataset(BaseModel):
    """A dataset fetched for one retrain run."""

    location: str  # where it was read: a prefix resolves to its newest file
    path: str  # the local copy the run ingests
    sha256: str  # of the bytes as read


class Precedent(BaseModel):
    """A version of the family trained on the same recipe, and what its gate decided."""

    model: str
    version: int
    decision: str | None  # promoted, rejected, or None when never gated


class Champion(BaseModel):
    """The model an alias points at, with the dataset it was trained on (when known)."""

    model: str
    version: int
    dataset: str | None
    dataset_sha256: str | None


class RetrainResult(BaseModel):
    """What a retrain run did, and why."""

    outcome: Outcome
    reason: str
    family: str
    dataset: str
    dataset_sha256: str
    candidate: str | None = None
    champion: str | None = None  # the alias's model after the run
    decision: Decision | None = None

    def to_markdown(self) -> str:
        lines = [
            f"# Retrain of `{self.family}`: **{self.outcome}**",
            "",
            self.reason,
            "",
            "| | |",
            "|---|---|",
            f"| dataset | `{self.dataset}` |",
            f"| sha256 | `{self.dataset_sha256}` |",
            f"| candidate | {_code(self.candidate)} |",
            f"| champion | {_code(self.champion)} |",
        ]
        if self.decision is not None:
            lines += ["", self.decision.to_markdown().replace("# ", "## ", 1)]
        return "\n".join(lines)


def family_of(model: str, suffix: str) -> str:
    """The registered model a retrain of ``model`` with ``suffix`` adds versions to."""
    from loraflow import registry
    from loraflow.fine_tuning import model_name
    from loraflow.models import resolve_model

    return registry.family(model_name(resolve_model(model).name, suffix))


def recipe_settings(config: RetrainConfig) -> dict[str, Any]:
    """What of a retrain config shapes the model: hyperparameters (defaults filled in) and
    the split. The gate does not: it judges the model, it does not make it."""
    from loraflow.training.hyperparameters import parse_hyperparameters

    return {
        "hyperparameters": parse_hyperparameters(config.hyperparameters).model_dump(mode="json"),
        "validation_fraction": config.validation_fraction,
        "seed": config.seed,
    }


def unchanged_reason(
    dataset: Dataset, precedents: list[Precedent], champion: Champion | None, alias: str
) -> str | None:
    """Why there is nothing to do (this recipe was trained already), or None."""
    if not precedents:
        return None
    data = f"this dataset (sha256 {dataset.sha256[:12]})"
    force = "nothing to do. Set force to retrain anyway."
    for found in precedents:
        if champion is not None and found.model == champion.model:
            return f"{found.model} ({alias}) was trained on {data} with this recipe; {force}"
    last = max(precedents, key=lambda p: p.version)
    verdict = {"rejected": "was rejected", "promoted": "was promoted before"}.get(
        last.decision or "", "was never promoted"
    )
    return (
        f"version {last.version} ({last.model}) was trained on {data} with this recipe and "
        f"{verdict}; training it again would give the same model: {force}"
    )


def exit_code(state_name: str | None, state_type: str) -> int:
    """The exit code for a finished retrain run: by outcome when it completed, else 1."""
    if state_type != "COMPLETED":
        return EXIT_RUN_FAILED
    return EXIT_CODES.get((state_name or "").lower(), EXIT_RUN_FAILED)


def start(overrides: dict[str, Any]) -> Any:
    """Start a run of the retrain deployment: its parameters with ``overrides``; the run.

    The overrides are checked here first, so a bad value fails before any run exists.
    """
    from loraflow import jobs

    def parameters(defaults: dict[str, Any]) -> dict[str, Any]:
        config = check_config(merge(defaults.get("config", {}), overrides))
        return {"config": config.model_dump(mode="json")}

    return jobs.start_job(FLOW_NAME, parameters, None, TAG)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def overrides_from(assignments: list[str]) -> dict[str, Any]:
    """``["gate.min_improvement=0.05", "force=true"]`` as nested overrides (values are YAML)."""
    import yaml

    from loraflow.errors import InvalidRequestError

    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequestError(f"--set {item!r}: write KEY=VALUE, e.g. gate.alias=prod")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def check_config(raw: dict[str, Any]) -> RetrainConfig:
    """``raw`` as a RetrainConfig; InvalidRequestError naming the field otherwise."""
    from pydantic import ValidationError

    from loraflow.errors import InvalidRequestError, field_problems

    try:
        return RetrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequestError(f"retrain config: {field_problems(exc, '(top)')}") from None


def _code(value: str | None) -> str:
    return f"`{value}`" if value else "(none)"
