"""Flow: evaluate a fine-tune beside the current champion and promote it if it is better.

Both models answer the same validation file; the rule (a metric and a margin) decides. The
comparison is a Prefect artifact and tags on the candidate's registry version; the alias
moves only on promotion. ``promote(PromoteConfig(model="…", validation_file="file-…"))``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from loraflow.promotion import Decision, PromoteConfig
from tasks.promote import record_decision, score_model


@flow(name="promote", log_prints=True)
def promote(config: PromoteConfig = PromoteConfig()) -> Decision:  # noqa: B008
    """Score candidate and champion, decide by the rule, record it; returns the decision."""
    from loraflow import registry
    from loraflow.errors import InvalidRequestError
    from loraflow.promotion import decide

    candidate = registry.resolve(config.model)
    record = registry.read_record(candidate)
    if record.registered_model is None:
        raise InvalidRequestError(f"model: {candidate} is not in the registry; register it first")
    champion = registry.alias_target(record.registered_model, config.alias)
    logger = get_run_logger()
    logger.info(f"candidate {candidate}, {config.alias} {champion or '(none)'}")
    args = (config.validation_file, config.max_examples, config.max_new_tokens)
    candidate_scores = score_model(candidate, *args)
    if champion == candidate:
        reason = f"{candidate} already is {config.alias}"
        return Decision(
            candidate=candidate,
            champion=champion,
            alias=config.alias,
            promoted=False,
            reason=reason,
            metric=config.metric,
            improvement=0.0,
            candidate_scores=candidate_scores,
            champion_scores=candidate_scores,
        )
    champion_scores = score_model(champion, *args) if champion else None
    return record_decision(decide(candidate_scores, champion_scores, config, config.alias))


if __name__ == "__main__":
    import sys

    from flows import main

    main(promote, sys.argv)
