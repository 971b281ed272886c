"""Deployments are built from configs/: every flow, its parameters checked against its config
model, the retrain schedule, and a UI form with a default for every field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.build import FLOWS, build, flow_of, load
from flows import config_model
from loraflow.errors import ConfigError
from loraflow.jobs import DEPLOYMENTS
from loraflow.retraining import RetrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_flow_is_deployed_from_the_configs() -> None:
    config = load(CONFIGS / "deployments.yaml")
    built = {d.flow_name: d for d in build(config, CONFIGS / "deployments.yaml")}
    assert set(built) == set(FLOWS)
    assert {f: d.name for f, d in built.items()} == DEPLOYMENTS  # each named for its purpose
    assert len(set(DEPLOYMENTS.values())) == len(DEPLOYMENTS)
    assert {d.entrypoint for d in built.values()} == set(FLOWS.values())

    retrain = built["retrain"]
    [schedule] = retrain.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    assert retrain.concurrency_limit == 1
    on_disk = yaml.safe_load((CONFIGS / "retrain.yaml").read_text())
    assert retrain.parameters["config"] == RetrainConfig(**on_disk).model_dump(mode="json")
    assert retrain.parameters["config"]["suffix"] == on_disk["suffix"]
    for name, deployment in built.items():
        model = config_model(flow_of(name))
        if name == "fine-tune":  # its training file is the caller's: no default run
            assert "config" not in deployment.parameters
            continue
        assert model.model_validate(deployment.parameters["config"])  # the run validates it


def _models(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in schema.get("definitions", {}).items() if "properties" in v}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_the_ui_form_has_a_default_for_every_field(name: str) -> None:
    [deployment] = [d for d in build() if d.flow_name == name]
    schema = deployment._parameter_openapi_schema.model_dump()
    assert list(schema["properties"]) == ["config"]  # one pydantic model per flow
    models = _models(schema)
    assert config_model(flow_of(name)).__name__ in models
    required = {f"{m}.{f}" for m, body in models.items() for f in body.get("required", [])}
    assert required == REQUIRED.get(name, set()), name  # what the form insists on
    assert ("default" in schema["properties"]["config"]) == (not required)
    for model, body in models.items():
        for field, spec in body["properties"].items():
            shown = "default" in spec or f"{model}.{field}" in required
            assert shown, f"{name}: {model}.{field} shows empty in the UI form"
            assert spec.get("description"), f"{name}: {model}.{field} has no description"
            dropped = re.findall(r"<[^<>]*>", spec["description"])  # Prefect's UI drops <...>
            assert not dropped, f"{name}: {model}.{field}'s description shows without {dropped}"


REQUIRED = {"fine-tune": {"FineTuneRequest.training_file"}}  # the rest is pre-filled


def test_the_fine_tune_form_shows_each_hyperparameter_with_its_default() -> None:
    [deployment] = [d for d in build() if d.flow_name == "fine-tune"]
    models = _models(deployment._parameter_openapi_schema.model_dump())
    fields = models["Hyperparameters"]["properties"]
    assert fields["epochs"]["default"] == 5 and fields["lr"]["default"] == 2e-3
    assert "Passes over the training data" in fields["epochs"]["description"]
    assert "$ref" in str(models["FineTuneRequest"]["properties"]["hyperparameters"])


def test_bad_deployment_configs_name_the_file_and_field(tmp_path: Path) -> None:
    def write(name: str, body: str) -> Path:
        path = tmp_path / name
        path.write_text(body)
        return path

    flows = "".join(f"  {f}: {{}}\n" for f in FLOWS if f != "retrain")
    path = write("a.yaml", f"deployments:\n{flows}  nightly: {{}}\n")
    with pytest.raises(
        ConfigError, match=r"a\.yaml: .*unknown \['nightly'\], missing \['retrain'\]"
    ):
        load(path)
    path = write("b.yaml", f"deployments:\n{flows}  retrain:\n    parameters: r.yaml\n")
    write("r.yaml", "dataset: x.csv\ngate:\n  min_improvement: -1\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: gate\.min_improvement: Input should be"):
        build(path=path)
    path = write(
        "c.yaml",
        f"deployments:\n{flows}  retrain:\n    schedules: [{{cron: '* * * * *', "
        "interval_seconds: 5}]\n",
    )
    with pytest.raises(ConfigError, match="exactly one of cron and interval_seconds"):
        load(path)
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.yaml")


def test_live_schedules_say_when_they_run_and_how_to_pause_them(tmp_path: Path) -> None:
    from deployments.build import default_path, live_schedules

    (line,) = live_schedules()
    assert line.startswith("schedule: retrain/nightly-or-ci runs by itself, cron '0 2 * * *' (UTC)")
    assert "prefect deployment schedule pause retrain/nightly-or-ci --all" in line
    config = yaml.safe_load(default_path().read_text())
    config["deployments"]["retrain"]["schedules"][0]["active"] = False
    for name in ("ingest.yaml", "retrain.yaml"):
        (tmp_path / name).write_text((default_path().parent / name).read_text())
    paused = tmp_path / "deployments.yaml"
    paused.write_text(yaml.safe_dump(config))
    assert live_schedules(paused) == []
