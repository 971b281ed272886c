"""MLflow tracking of fine-tunes: params, per-step metrics, the loss curve, and the adapter.

The adapter is logged as an MLflow pyfunc model holding the LoRA weights plus a reference to
its base model (zoo name and revision), never as a transformers model: MLflow's transformers
flavor reloads a PeftModel whose base has no hub id with random attention weights.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from loraflow.settings import Settings, get_settings

EXPERIMENT = "loraflow-fine-tunes"
# the MLflow UI opens a model-training experiment on its runs, not on an empty GenAI overview
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
BASE_REF = "base_model.json"
PIP_REQUIREMENTS = ["loraflow", "torch==2.13.0", "transformers==5.23.*", "peft==0.21.*"]


def configure(settings: Settings | None = None) -> str:
    """Point MLflow at loraflow's tracking URI and experiment; returns the experiment id.

    Artifacts go to the object store (``<storage>/mlflow-artifacts``), with the store's
    S3 endpoint and credentials.
    """
    from loraflow.storage.s3 import s3_environment

    settings = settings or get_settings()
    os.environ.update(s3_environment(settings))  # MLflow's S3 client reads only these
    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    found = mlflow.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        mlflow.set_experiment(experiment_id=found.experiment_id)
        if found.tags.get(KIND_TAG) != KIND:
            mlflow.set_experiment_tag(KIND_TAG, KIND)
        return found.experiment_id
    location = settings.storage_url.rstrip("/") + "/mlflow-artifacts"
    experiment_id = mlflow.create_experiment(
        EXPERIMENT, artifact_location=location, tags={KIND_TAG: KIND}
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def run_url(run_id: str, ui: str, settings: Settings | None = None) -> str:
    """The run's page in the MLflow UI at ``ui`` (a tracking server, or the stack's UI).

    The experiment is looked up in loraflow's tracking store, not in whatever MLflow's
    process-wide URI points at (unset in a client process: an ``mlflow.db`` it would create
    in the working directory, and a link to the wrong experiment).
    """
    uri = (settings or get_settings()).tracking_uri
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(EXPERIMENT)
    where = experiment.experiment_id if experiment else "0"
    return f"{ui.rstrip('/')}/#/experiments/{where}/runs/{run_id}"


def code_version() -> str:
    """loraflow's git commit when run from a checkout, else its package version."""
    from loraflow import __version__

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as ``a.b`` keys with string values (MLflow params are flat)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif value is not None:
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


class MlflowReporter:
    """Sends the training loop's metrics to the active MLflow run."""

    def begin(self, total_steps: int) -> None:
        mlflow.log_param("total_steps", total_steps)

    def event(self, message: str, level: str = "info") -> None:
        pass  # events live in the job's log; MLflow keeps numbers

    def metrics(self, step: int, values: dict[str, float]) -> None:
        mlflow.log_metrics(values, step=step)

    def should_stop(self) -> bool:
        return False


LOSS_PNG = "loss_curve.png"


def log_loss_curve(history: list[dict[str, float]]) -> None:
    """Log the training and validation loss against step as ``LOSS_PNG``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="training loss")
    evals = [h for h in history if "eval_loss" in h]
    if evals:
        ax.plot(
            [h["step"] for h in evals],
            [h["eval_loss"] for h in evals],
            "o-",
            label="validation loss",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (response tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    mlflow.log_figure(fig, LOSS_PNG)
    plt.close(fig)


class AdapterModel(PythonModel):
    """An MLflow pyfunc: a LoRA adapter applied to its base model, greedy completion in predict.

    ``model_input`` is annotated as the DataFrame MLflow passes (a list of prompts works too):
    without a hint MLflow warns, in raw ANSI colours, on every import of this module.
    """

    def load_context(self, context: Any) -> None:
        self.model, self.tokenizer = load_adapter(Path(context.artifacts["adapter"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[str]:
        prompts: Any = model_input
        if hasattr(prompts, "columns"):  # a DataFrame: "prompt" or the only column
            prompts = prompts["prompt" if "prompt" in prompts.columns else prompts.columns[0]]
        max_new = int((params or {}).get("max_new_tokens", 64))
        return greedy_answers(self.model, self.tokenizer, [str(p) for p in prompts], max_new)


def greedy_answers(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """Greedy chat answers, one prompt at a time (a reference path, not the serving engine)."""
    import torch

    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(
            tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return answers


def write_base_ref(adapter_dir: Path, base_name: str, revision: str) -> None:
    """Record which base model (zoo name and revision) the adapter belongs to."""
    (adapter_dir / BASE_REF).write_text(json.dumps({"name": base_name, "revision": revision}))


def load_adapter(adapter_dir: Path) -> tuple[Any, Any]:
    """The base model named in ``adapter_dir`` with the adapter applied, and its tokenizer.

    Raises LoraflowError when the base model prepared here has another revision than the one
    the adapter was trained on.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraflow.errors import UnavailableError
    from loraflow.models import model_revision, prepare, resolve_model

    ref = json.loads((adapter_dir / BASE_REF).read_text())
    base_dir = prepare(resolve_model(ref["name"]))
    if model_revision(base_dir) != ref["revision"]:
        raise UnavailableError(
            f"adapter {adapter_dir} was trained on {ref['name']} revision {ref['revision']}, "
            f"but {base_dir} holds revision {model_revision(base_dir)}"
        )
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    return model, AutoTokenizer.from_pretrained(adapter_dir)


def log_adapter(adapter_dir: Path) -> str:
    """Log the adapter as the run's pyfunc model ``model``; returns its model URI."""
    from mlflow.models import infer_signature

    signature = infer_signature(["a prompt"], ["an answer"], params={"max_new_tokens": 64})
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=AdapterModel(),
        artifacts={"adapter": str(adapter_dir)},
        pip_requirements=PIP_REQUIREMENTS,
        signature=signature,
    )
    return info.model_uri
