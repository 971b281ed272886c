"""Promotion: move an alias (``champion``) to a candidate only when the evidence says so.

The rule compares one metric of candidate and champion on the same validation data; the
decision, with both sets of scores, is written to the candidate's registry version as tags.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from loraflow import registry
from loraflow.evaluation import LOWER_IS_BETTER, Metric, Scores, improvement


class Rule(BaseModel):
    """When a candidate beats the champion."""

    model_config = ConfigDict(extra="forbid")
    metric: Metric = Field(
        "eval_loss", description="eval_loss (lower wins), exact_match or rouge_l"
    )
    min_improvement: float = Field(
        0.0, ge=0, description="How much better the candidate must be (in the metric's units)."
    )


class Gate(Rule):
    """What a candidate must show, on how much data, to take the alias from the champion."""

    alias: str = Field("champion", description="The registry alias to move on promotion.")
    max_examples: int = Field(200, ge=1, description="Score at most this many rows.")
    max_new_tokens: int = Field(64, ge=1, description="Length of the greedy answers scored.")


class PromoteConfig(Gate):
    """What to evaluate, against which data, and when it wins."""

    model: str = Field("", description="Candidate: fine-tuned model name or family/version.")
    validation_file: str = Field("", description="File id of prompt/response rows to score on.")


class Decision(BaseModel):
    candidate: str
    champion: str | None
    alias: str
    promoted: bool
    reason: str
    metric: Metric
    improvement: float | None
    candidate_scores: Scores
    champion_scores: Scores | None

    def comparison(self) -> list[dict[str, object]]:
        """One row per scored model: role and scores (the evaluation table)."""
        rows: list[dict[str, object]] = []
        for role, s in (("candidate", self.candidate_scores), ("champion", self.champion_scores)):
            if s is not None:
                rows.append({"model": s.model, "role": role, **s.model_dump(exclude={"model"})})
        return rows

    def to_markdown(self) -> str:
        verdict = "**promoted**" if self.promoted else "**kept the champion**"
        lines = [
            f"# Promotion to `{self.alias}`: {verdict}",
            "",
            self.reason,
            "",
            "| model | role | examples | eval loss | exact match | ROUGE-L |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.comparison():
            lines.append(
                f"| `{r['model']}` | {r['role']} | {r['examples']} | {r['eval_loss']:.4f} "
                f"| {r['exact_match']:.3f} | {r['rouge_l']:.3f} |"
            )
        return "\n".join(lines)


def decide(
    candidate: Scores, champion: Scores | None, rule: Rule, alias: str = "champion"
) -> Decision:
    """Whether ``candidate`` takes ``alias`` from ``champion`` under ``rule`` (pure)."""
    common = {
        "candidate": candidate.model,
        "champion": champion.model if champion else None,
        "alias": alias,
        "metric": rule.metric,
        "candidate_scores": candidate,
        "champion_scores": champion,
    }
    if champion is None:
        return Decision(**common, promoted=True, improvement=None, reason=f"no {alias} yet")
    gain = improvement(rule.metric, candidate, champion)
    better = "lower" if rule.metric in LOWER_IS_BETTER else "higher"
    promoted = gain > 0 and gain >= rule.min_improvement
    reason = (
        f"{rule.metric}: candidate {getattr(candidate, rule.metric):.4f} vs champion "
        f"{getattr(champion, rule.metric):.4f} ({better} wins); improvement {gain:+.4f}, "
        f"needed more than 0 and at least {rule.min_improvement}"
    )
    return Decision(**common, promoted=promoted, improvement=gain, reason=reason)


def apply(decision: Decision) -> None:
    """Record the decision on the candidate's version; move the alias if it was promoted."""
    record = registry.read_record(decision.candidate)
    prefix = f"{registry.TAG_PROMOTION}{decision.alias}"
    scores = decision.candidate_scores
    registry.tag_version(
        record,
        {
            f"{prefix}.decision": "promoted" if decision.promoted else "rejected",
            f"{prefix}.reason": decision.reason[:4000],
            f"{prefix}.against": decision.champion or "",
            "loraflow.eval.eval_loss": f"{scores.eval_loss:.6f}",
            "loraflow.eval.exact_match": f"{scores.exact_match:.6f}",
            "loraflow.eval.rouge_l": f"{scores.rouge_l:.6f}",
            "loraflow.eval.examples": str(scores.examples),
        },
    )
    if decision.promoted:
        from loraflow import backends

        backends.warm(record.fine_tuned_model)  # served before the alias points at it
        registry.set_alias(record, decision.alias)
