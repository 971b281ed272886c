"""Prefect tasks of promotion: score a model on validation data, record the decision."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from loraflow.evaluation import Scores
from loraflow.promotion import Decision
from tasks.validate import artifact_key


@task(name="score-model", cache_policy=NO_CACHE)
def score_model(model: str, validation_file: str, max_examples: int, max_new_tokens: int) -> Scores:
    """Eval loss, exact match and ROUGE-L of ``model`` on a stored validation file."""
    from loraflow.evaluation import score
    from loraflow.files import FileRepository

    frame = FileRepository.from_settings().rows(validation_file)
    scores = score(model, frame.head(max_examples), max_new_tokens)
    get_run_logger().info(f"{model}: {scores.model_dump()}")
    return scores


@task(name="record-decision", cache_policy=NO_CACHE)
def record_decision(decision: Decision) -> Any:
    """Tag the candidate's version, move the alias if promoted, publish the comparison."""
    from loraflow import promotion

    promotion.apply(decision)
    key = artifact_key("promotion", decision.candidate.rsplit(".", 1)[0])
    create_markdown_artifact(
        markdown=decision.to_markdown(),
        key=key,
        description=f"Promotion of {decision.candidate} to {decision.alias}",
    )
    create_table_artifact(
        table=decision.comparison(),
        key=f"{key}-evaluation",
        description=f"Candidate and {decision.alias} scored on the same validation rows",
    )
    get_run_logger().info(decision.reason)
    return decision
