"""MLflow: the logged adapter reloads with exactly the trained model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from loraflow import tracking
from loraflow.errors import LoraflowError
from loraflow.models import model_revision
from loraflow.training.fused_lora import fuse_lora
from loraflow.training.loop import Trainer
from tests.training.conftest import RecordingReporter


def test_logged_adapter_reloads_with_identical_logits(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    plan = tiny_plan(epochs=1)
    trainer = Trainer(plan, RecordingReporter())
    result = trainer.run()
    tracking.write_base_ref(result.adapter_dir, plan.spec.name, model_revision(plan.model_dir))
    tracking.configure()
    with mlflow.start_run():
        uri = tracking.log_adapter(result.adapter_dir)
    loaded = mlflow.pyfunc.load_model(uri)
    reloaded = loaded.unwrap_python_model().model
    ids = torch.tensor([[3, 17, 99, 250, 41, 7]])
    with torch.no_grad():
        trained = trainer._unwrapped().eval()(input_ids=ids).logits
        again = reloaded(input_ids=ids).logits  # peft's own forward
        assert fuse_lora(reloaded) > 0  # the trainer's LoRA forward: the same sums, same order
        fused = reloaded(input_ids=ids).logits
    assert torch.equal(trained, fused)
    torch.testing.assert_close(again, trained, rtol=1e-5, atol=1e-6)  # only rounding apart
    base = reloaded.get_base_model()
    with torch.no_grad(), reloaded.disable_adapter():
        plain = base(input_ids=ids).logits
    assert not torch.allclose(plain, again)  # the adapter really changes the output
    (answer,) = loaded.predict(["How do I reset my password?"], params={"max_new_tokens": 4})
    assert isinstance(answer, str)


def test_reload_refuses_another_base_revision(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    plan = tiny_plan(epochs=1)
    result = Trainer(plan, RecordingReporter()).run()
    tracking.write_base_ref(result.adapter_dir, plan.spec.name, "tiny:some-other-revision")
    with pytest.raises(LoraflowError, match="revision"):
        tracking.load_adapter(result.adapter_dir)
    ref = json.loads((result.adapter_dir / tracking.BASE_REF).read_text())
    assert ref["name"] == "tiny-llama-test"


def test_a_run_link_names_loraflows_experiment_wherever_mlflow_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client process (the SDK's `progress`) never set MLflow's URI: the link must still
    name loraflow's experiment, and no mlflow.db may appear in the working directory."""
    experiment = tracking.configure()  # loraflow's experiment, in the home's database
    assert experiment != "0"  # MLflow's Default: what a lookup in the wrong database gives
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = tracking.run_url("0123abcd", "http://127.0.0.1:5000/")
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/0123abcd"
    assert list(cwd.iterdir()) == []
