"""Every YAML file in configs/ loads into the model that reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.build import DeploymentsConfig
from flows.ingest import IngestConfig
from flows.promote import PromoteConfig
from loraflow.batch import BatchCompleteConfig
from loraflow.fine_tuning import FineTuneRequest
from loraflow.models.zoo import ModelSpec
from loraflow.promotion import Gate
from loraflow.retraining import RetrainConfig
from loraflow.settings import Settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class Zoo:
    """configs/models.yaml: a mapping of names to model specs."""

    @staticmethod
    def model_validate(raw: dict) -> None:
        for name, body in raw.items():
            ModelSpec(name=name, **body)


MODELS = {
    "stack.yaml": Settings,
    "ingest.yaml": IngestConfig,
    "models.yaml": Zoo,
    "deployments.yaml": DeploymentsConfig,
    "retrain.yaml": RetrainConfig,
}
FLOW_CONFIGS = [
    IngestConfig,
    FineTuneRequest,
    PromoteConfig,
    Gate,
    BatchCompleteConfig,
    RetrainConfig,
]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_file_loads(path: Path) -> None:
    assert path.name in MODELS, f"{path.name} has no model to check it against; add it here"
    MODELS[path.name].model_validate(yaml.safe_load(path.read_text()) or {})


@pytest.mark.parametrize("model", FLOW_CONFIGS, ids=lambda m: m.__name__)
def test_flow_config_defaults_are_plain(model: type) -> None:
    """The Prefect UI shows default_factory fields empty: every field needs a plain default."""
    schema = model.model_json_schema()
    assert set(schema["properties"]) == set(model.model_fields)
    for name, field in model.model_fields.items():
        assert field.default_factory is None, name
        assert field.description, name
