"""Hyperparameters: LLM Engine's names and defaults, numeric strings, clear refusals."""

from __future__ import annotations

import pytest

from loraflow.errors import InvalidRequestError
from loraflow.training.hyperparameters import LORA_DEFAULTS, parse_hyperparameters


def test_defaults_are_llm_engines() -> None:
    hp = parse_hyperparameters(None)
    assert (hp.lr, hp.warmup_ratio, hp.epochs, hp.weight_decay) == (2e-3, 0.03, 5, 0.001)
    assert hp.lora() == LORA_DEFAULTS


def test_numeric_strings_are_accepted() -> None:
    hp = parse_hyperparameters(
        {
            "epochs": "3",
            "lr": "0.0002",
            "batch_size": "4",
            "peft_config": {"r": "16", "lora_alpha": "32"},
        }
    )
    assert (hp.epochs, hp.lr, hp.batch_size) == (3, 2e-4, 4)
    assert hp.lora() == {"r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05}


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        ({"learning_rate": 1}, "unknown hyperparameter 'learning_rate' (known: lr, warmup_ratio"),
        ({"epochs": 20}, "epochs: Input should be less than 20"),
        ({"epochs": "1.5"}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"peft_config": {"alpha": 8}}, "unknown LoRA parameter 'alpha'"),
        ({"peft_config": {"r": 0}}, "Invalid value received for lora parameter 'r'"),
        ({"peft_config": {"lora_dropout": "lots"}}, "lora_dropout"),
    ],
)
def test_bad_values_are_refused_with_the_field(raw: dict, phrase: str) -> None:
    with pytest.raises(InvalidRequestError, match="invalid hyperparameters") as caught:
        parse_hyperparameters(raw)
    assert phrase in str(caught.value)
