"""The promote flow: the alias moves only to a better candidate, with the evidence recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from flows.promote import PromoteConfig, promote
from loraflow import File, Model, registry
from loraflow.evaluation import Scores
from loraflow.promotion import Rule, decide
from loraflow.tracking import configure
from tests.helpers import SUPPORT_CSV, tiny_fine_tune, write

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAMILY = "tiny-llama-test.promo"


def scores(model: str, loss: float, rouge: float = 0.1) -> Scores:
    return Scores(model=model, examples=10, eval_loss=loss, exact_match=0.0, rouge_l=rouge)


def test_rule_needs_a_real_improvement() -> None:
    champion = scores("a", 2.0, rouge=0.5)
    assert decide(scores("b", 1.9), champion, Rule()).promoted
    assert not decide(scores("b", 2.0), champion, Rule()).promoted  # a tie keeps the champion
    assert not decide(scores("b", 1.9), champion, Rule(min_improvement=0.2)).promoted
    assert not decide(scores("b", 1.0, rouge=0.4), champion, Rule(metric="rouge_l")).promoted
    assert decide(scores("b", 9.0, rouge=0.6), champion, Rule(metric="rouge_l")).promoted
    assert decide(scores("b", 9.0), None, Rule()).reason == "no champion yet"


def test_promotion_moves_the_alias_only_when_the_candidate_is_better(tmp_path: Path) -> None:
    lines = SUPPORT_CSV.read_text().splitlines()
    held_out = write(tmp_path, "held-out.csv", "\n".join([lines[0], *lines[100:130]]) + "\n")
    validation = File.upload(held_out).id
    weak = tiny_fine_tune(tmp_path, "promo", epochs=1, lr=1e-5).fine_tuned_model
    strong = tiny_fine_tune(tmp_path, "promo", epochs=3, lr=0.01).fine_tuned_model

    def run(model: str) -> object:
        return promote(PromoteConfig(model=model, validation_file=validation, max_new_tokens=8))

    first = run(weak)
    assert first.promoted and first.champion is None
    assert registry.resolve(f"{FAMILY}@champion") == weak

    second = run(f"{FAMILY}/2")  # the strong one, by version
    assert second.candidate == strong and second.champion == weak
    assert second.promoted, second.reason
    assert second.candidate_scores.eval_loss < second.champion_scores.eval_loss
    assert registry.resolve(f"{FAMILY}@champion") == strong

    third = run(weak)  # the weak one again: worse, so the champion stays
    assert not third.promoted and third.champion == strong
    assert registry.resolve(f"{FAMILY}@champion") == strong
    assert Model.get(strong).aliases == ["champion"] and Model.get(weak).aliases == []
    assert registry.champions() == [f"{FAMILY}@champion"]  # what a server warms at start

    configure()
    tags = MlflowClient().get_model_version(FAMILY, "1").tags
    assert tags["loraflow.promotion.champion.decision"] == "rejected"
    assert tags["loraflow.promotion.champion.against"] == strong
    assert float(tags["loraflow.eval.eval_loss"]) == pytest.approx(
        third.candidate_scores.eval_loss, rel=1e-5
    )
    assert run(strong).reason == f"{strong} already is champion"

    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    keys = {a.key for a in artifact}
    assert "promotion-tiny-llama-test-promo" in keys
