"""Flow: the end-to-end retrain pipeline that schedules and CI call.

dataset → (skip if a version was trained on the same recipe) → ingest → fine-tune → score
beside the champion → promote if better. Each stage is a subflow, so the ingest, the fine-tune job
and the promotion decision show in the Prefect UI on their own as well. The run ends in a
COMPLETED state named by its outcome: Promoted, Unchanged or Rejected (see
``loraflow.retraining``).

From Python, with the embedded defaults (no server needed)::

    from flows.retrain import retrain
    from loraflow.retraining import RetrainConfig

    result = retrain(RetrainConfig(dataset="data/support.csv", suffix="support"))
    print(result.outcome, result.reason)
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed

from flows.fine_tune import fine_tune
from flows.ingest import IngestConfig, ingest
from flows.promote import PromoteConfig, promote
from loraflow.fine_tuning import FineTuneRequest
from loraflow.retraining import (
    FLOW_NAME,
    Dataset,
    RetrainConfig,
    RetrainResult,
    family_of,
    unchanged_reason,
)
from tasks.retrain import (
    fetch_dataset,
    find_champion,
    find_precedents,
    fingerprint_recipe,
    publish_summary,
    tag_lineage,
    work_dir,
)


@flow(name=FLOW_NAME, log_prints=True)
def retrain(config: RetrainConfig = RetrainConfig()) -> Any:  # noqa: B008
    """Retrain on ``config.dataset`` unless nothing changed; returns the RetrainResult."""
    family = family_of(config.model, config.suffix)
    scratch = work_dir(str(flow_run.id or "local"))
    try:
        dataset = fetch_dataset(config.dataset, scratch)
        recipe = fingerprint_recipe(config, dataset)
        champion = find_champion(family, config.gate.alias)
        precedents = find_precedents(family, recipe, config.gate.alias)
        reason = unchanged_reason(dataset, precedents, champion, config.gate.alias)
        if reason and not config.force:
            return _finish(
                RetrainResult(
                    outcome="unchanged",
                    reason=reason,
                    champion=champion.model if champion else None,
                    **_about(family, dataset),
                )
            )
        if reason:
            get_run_logger().info(f"forced to retrain: {reason}")
        return _finish(_train_and_gate(config, family, dataset, recipe))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_and_gate(
    config: RetrainConfig, family: str, dataset: Dataset, recipe: str
) -> RetrainResult:
    """Ingest, fine-tune and score beside the champion, each a subflow; promote if better."""
    stored = ingest(
        IngestConfig(
            source=dataset.path, validation_fraction=config.validation_fraction, seed=config.seed
        )
    )
    tuned = fine_tune(
        FineTuneRequest(
            model=config.model,
            training_file=stored.training_file,
            validation_file=stored.validation_file,
            hyperparameters=config.hyperparameters,
            suffix=config.suffix,
        )
    )
    tag_lineage(tuned.fine_tuned_model, dataset, recipe)
    decision = promote(
        PromoteConfig(
            model=tuned.fine_tuned_model,
            validation_file=str(stored.validation_file),
            **config.gate.model_dump(),
        )
    )
    return RetrainResult(
        outcome="promoted" if decision.promoted else "rejected",
        reason=decision.reason,
        candidate=tuned.fine_tuned_model,
        champion=tuned.fine_tuned_model if decision.promoted else decision.champion,
        decision=decision,
        **_about(family, dataset),
    )


def _about(family: str, dataset: Dataset) -> dict[str, str]:
    return {"family": family, "dataset": dataset.location, "dataset_sha256": dataset.sha256}


def _finish(result: RetrainResult) -> Any:
    """Publish the outcome and end the run in a COMPLETED state named after it."""
    get_run_logger().info(f"{result.outcome}: {result.reason}")
    publish_summary(result.family, result.to_markdown(), f"Retrain outcome: {result.outcome}")
    return Completed(name=result.outcome.title(), message=result.reason[:1000], data=result)


if __name__ == "__main__":
    from flows import main

    main(retrain, sys.argv)
