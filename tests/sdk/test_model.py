"""Registration, ``Model`` and serving of fine-tunes, through the real fine-tune flow."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

import loraflow
from loraflow import Completion, InvalidRequestError, Model, NotFoundError, registry
from loraflow.tracking import configure
from tests.helpers import tiny_fine_tune

pytestmark = pytest.mark.usefixtures("prefect_harness")
PROMPT = "How do I reset my password?"


def test_a_fine_tune_is_registered_with_lineage_and_served_by_every_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = tiny_fine_tune(tmp_path, "lineage")
    name = outcome.fine_tuned_model
    configure()
    version = MlflowClient().get_model_version("tiny-llama-test.lineage", "1")
    tags = version.tags
    assert tags["loraflow.fine_tuned_model"] == name
    assert tags["loraflow.training_file"] == outcome.training_file
    assert tags["loraflow.training_sha256"] == outcome.training_sha256
    assert tags["loraflow.base_model"] == "tiny-llama-test"
    assert tags["loraflow.base_revision"] == outcome.base_revision
    assert tags["loraflow.mlflow_run_id"] == outcome.mlflow_run_id == version.run_id
    assert float(tags["loraflow.eval_loss"]) == pytest.approx(outcome.eval_loss)
    assert tags["prefect.flow_run_id"]
    MlflowClient().set_registered_model_alias("tiny-llama-test.lineage", "champion", "1")

    info = Model.get(name)
    assert (info.name, info.model_name, info.status, info.fine_tuned) == (
        name,
        "tiny-llama-test",
        "READY",
        True,
    )
    assert (info.registered_model, info.version, info.aliases) == (
        "tiny-llama-test.lineage",
        1,
        ["champion"],
    )
    lineage = info.lineage
    assert lineage is not None and lineage.job_id == outcome.job_id
    assert (lineage.training_file, lineage.training_sha256) == (
        outcome.training_file,
        outcome.training_sha256,
    )
    assert (lineage.base_model, lineage.base_revision) == ("tiny-llama-test", outcome.base_revision)
    assert lineage.hyperparameters["epochs"] == 3 and lineage.hyperparameters["seed"] == 42
    assert lineage.loraflow_version == loraflow.__version__ and lineage.code_commit
    assert lineage.mlflow_run_id == outcome.mlflow_run_id
    assert lineage.prefect_flow_run_id == tags["prefect.flow_run_id"]
    assert lineage.links == {}  # no stack runs: no UI to link to
    ui = {"mlflow": "http://127.0.0.1:5000"}  # with the stack's MLflow UI up: the run's page
    monkeypatch.setattr(loraflow.jobs, "stack_url", lambda settings, service: ui.get(service))
    assert Model.get(name).lineage.links == {  # type: ignore[union-attr]
        "mlflow_run": f"{ui['mlflow']}/#/experiments/{configure()}/runs/{outcome.mlflow_run_id}"
    }
    for reference in (
        "tiny-llama-test.lineage@champion",
        "tiny-llama-test.lineage/1",
        "models:/tiny-llama-test.lineage@champion",
    ):
        assert registry.resolve(reference) == name
        assert Model.get(reference).name == name

    tuned = Completion.create(name, PROMPT, 24, 0).output.text
    base = Completion.create("tiny-llama-test", PROMPT, 24, 0).output.text
    assert tuned != base  # the adapter changes what the model says on a trained prompt
    assert Completion.create("tiny-llama-test.lineage@champion", PROMPT, 24, 0).output.text == tuned

    listed = {m.name: m for m in Model.list().model_endpoints}
    assert {"tiny-llama-test", "smollm2-135m-instruct", name} <= set(listed)
    assert listed[name].aliases == ["champion"] and not listed["tiny-llama-test"].fine_tuned

    with pytest.raises(NotFoundError):
        registry.resolve("tiny-llama-test.lineage@nope")
    with pytest.raises(NotFoundError):
        Model.get("tiny-llama-test.lineage/7")
    with pytest.raises(InvalidRequestError, match="model"):
        Model.get("tiny-llama-test.lineage/x")

    with pytest.raises(InvalidRequestError, match="base model"):
        Model.delete("tiny-llama-test")
    assert Model.delete(name).deleted
    assert not Model.delete(name).deleted
    with pytest.raises(NotFoundError):
        Model.get(name)
    with pytest.raises(NotFoundError):
        Completion.create(name, PROMPT, 4, 0)
    assert MlflowClient().search_model_versions("name = 'tiny-llama-test.lineage'") == []


def test_download_urls_fetch_the_adapter(tmp_path: Path, backend: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraflow.models import prepare, resolve_model

    name = tiny_fine_tune(tmp_path, "download").fine_tuned_model
    urls = Model.download(name).urls
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(urls)
    if backend == "s3":
        assert all("X-Amz-Expires=3600" in url for url in urls.values())
    else:
        assert all(url.startswith("file://") for url in urls.values())
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for filename, url in urls.items():
        with urllib.request.urlopen(url) as response:
            (folder / filename).write_bytes(response.read())
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    base = AutoModelForCausalLM.from_pretrained(prepare(resolve_model("tiny-llama-test")))
    model = PeftModel.from_pretrained(base, folder)
    assert any("lora_A" in key for key in model.state_dict())
    with pytest.raises(InvalidRequestError, match="download_format"):
        Model.download(name, download_format="gguf")
    with pytest.raises(NotFoundError, match="base model"):
        Model.download("tiny-llama-test")


def test_the_same_recipe_and_seed_give_the_same_loss_curve(tmp_path: Path) -> None:
    first = tiny_fine_tune(tmp_path, "again-a", rows=24, epochs=2)
    second = tiny_fine_tune(tmp_path, "again-b", rows=24, epochs=2)
    assert first.training_sha256 == second.training_sha256
    configure()
    client = MlflowClient()
    curves = [
        [(m.step, m.value) for m in client.get_metric_history(run, "loss")]
        for run in (first.mlflow_run_id, second.mlflow_run_id)
    ]
    assert len(curves[0]) > 2 and curves[0] == curves[1]
    assert first.eval_loss == second.eval_loss
