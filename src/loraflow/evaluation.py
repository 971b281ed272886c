"""Scoring a served model on reference data: response loss, exact match and ROUGE-L.

Loss is the token-weighted cross-entropy of the reference responses (the same loss training
reports); exact match and ROUGE-L compare greedy answers with the references.
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

Metric = Literal["eval_loss", "exact_match", "rouge_l"]
LOWER_IS_BETTER = {"eval_loss"}


class Scores(BaseModel):
    model: str
    examples: int
    eval_loss: float
    exact_match: float
    rouge_l: float


def response_loss(
    engine: Any, adapter: str | None, frame: pl.DataFrame, batch_size: int = 8
) -> float:
    """Mean loss per response token of ``frame``'s rows under the model (and adapter)."""
    import torch

    from loraflow.models import resolve_model
    from loraflow.training.data import collate, encode
    from loraflow.training.model import ResponseLoss

    max_length = min(resolve_model(engine.base).max_length, engine.context)
    examples, _ = encode(frame, engine.tokenizer, engine.use_chat, max_length)
    pad = engine.tokenizer.pad_token_id
    pad = engine.tokenizer.eos_token_id if pad is None else pad
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, count = 0.0, 0
    with engine.scoring(adapter) as model, torch.inference_mode():
        loss_of = ResponseLoss(model if hasattr(model, "get_base_model") else _Wrap(model))
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            batch = collate(examples, order[start : start + batch_size], pad)
            loss, n = loss_of(
                batch.input_ids.to(device), batch.attention_mask.to(device), batch.labels.to(device)
            )
            total, count = total + float(loss), count + int(n)
    return total / max(count, 1)


class _Wrap:
    """Gives a bare model the ``get_base_model`` a peft model has (ResponseLoss asks for it)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_base_model(self) -> Any:
        return self.model


def _normal(text: str) -> str:
    return " ".join(text.split()).lower()


def score(model: str, frame: pl.DataFrame, max_new_tokens: int = 64) -> Scores:
    """Scores of ``model`` (any reference the engine serves) on prompt/response rows."""
    from rouge_score import rouge_scorer

    from loraflow import completion
    from loraflow.engine import resolve_served
    from loraflow.training.data import conversation

    engine, adapter = resolve_served(model)
    histories = frame["messages"] if "messages" in frame.columns else [None] * len(frame)
    inputs = [
        conversation(p, m) if m else p for p, m in zip(frame["prompt"], histories, strict=True)
    ]
    params = completion.params(max_new_tokens=max_new_tokens, temperature=0)
    answers = [r.generations[0] for r in completion.generate(model, inputs, params)]
    references = list(frame["response"])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [
        scorer.score(ref, ans)["rougeL"].fmeasure
        for ref, ans in zip(references, answers, strict=True)
    ]
    exact = [_normal(a) == _normal(r) for a, r in zip(answers, references, strict=True)]
    return Scores(
        model=model,
        examples=len(frame),
        eval_loss=response_loss(engine, adapter, frame),
        exact_match=sum(exact) / len(exact),
        rouge_l=sum(rouge) / len(rouge),
    )


def improvement(metric: Metric, candidate: Scores, champion: Scores) -> float:
    """How much better the candidate is on ``metric`` (positive: better)."""
    a, b = getattr(candidate, metric), getattr(champion, metric)
    return b - a if metric in LOWER_IS_BETTER else a - b
