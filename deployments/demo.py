"""The demo: loraflow's whole path on the bundled dataset with the embedded defaults.

``make demo`` (or ``loraflow demo``) validates and stores the bundled 200-row customer-support
dataset, fine-tunes SmolLM2-135M-Instruct with LoRA on it (CPU is fine), shows the loss falling,
promotes it to ``smollm2-135m-instruct.support@champion`` when it beats the champion (the first
one does), and compares the model's answers to a few training prompts before and after. The
runs stay in the Prefect and MLflow stores afterwards: the stack (``make up``) shows them.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Column, Table

from flows.fine_tune import fine_tune
from flows.ingest import IngestConfig, ingest
from flows.promote import promote
from loraflow.cli._app import ID_COLUMN
from loraflow.fine_tuning import FineTuneRequest
from loraflow.jobs import prefect_api
from loraflow.promotion import PromoteConfig
from loraflow.settings import get_settings

BASE = "smollm2-135m-instruct"
PROMPTS = [
    "How do I reset my password?",
    "Can you help me track my order?",
    "I want to return an item.",
]
HYPERPARAMETERS = {"epochs": 2, "batch_size": 8, "lr": 2e-3}


def answers_before(prompts: list[str]) -> list[str]:
    """The base model's greedy answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraflow.models import prepare, resolve_model
    from loraflow.tracking import greedy_answers

    path = prepare(resolve_model(BASE))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return greedy_answers(model, AutoTokenizer.from_pretrained(path), prompts, 40)


def answers_after(model_uri: str, prompts: list[str]) -> list[str]:
    """The fine-tuned model's greedy answers, loaded back from MLflow."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri).predict(prompts, params={"max_new_tokens": 40})


def run(console: Console | None = None) -> None:
    """Run the demo and print what it did."""
    console = console or Console()
    settings = get_settings()
    started = time.monotonic()
    console.rule("[bold]loraflow demo")
    console.print(f"home {settings.home}   storage {settings.storage_url}")
    with prefect_api(settings):
        stored = ingest(IngestConfig())
        summary = stored.validation
        if summary is not None:
            console.print(
                f"{summary.source}: valid, {summary.rows:,} rows, {summary.warnings} warning(s)"
            )
        files = Table(ID_COLUMN, "role", "rows")
        files.add_row(stored.training_file, "training", str(stored.training_rows))
        files.add_row(stored.validation_file or "", "validation", str(stored.validation_rows))
        console.print(files)

        console.rule(f"{BASE} before fine-tuning")
        before = answers_before(PROMPTS)
        console.rule(f"LoRA fine-tune: {HYPERPARAMETERS}")
        outcome = fine_tune(
            FineTuneRequest(
                model=BASE,
                training_file=stored.training_file,
                validation_file=stored.validation_file,
                hyperparameters=HYPERPARAMETERS,
                suffix="support",
            )
        )
        console.rule("promotion: the candidate against the champion on the validation rows")
        decision = promote(
            PromoteConfig(
                model=outcome.fine_tuned_model,
                validation_file=stored.validation_file or "",
                max_new_tokens=32,
            )
        )
    after = answers_after(outcome.model_uri, PROMPTS)
    _show(console, outcome, before, after)
    champion = f"{outcome.registered_model}@{decision.alias}"
    verdict = "is now" if decision.promoted else "stays with the earlier model as"
    console.print(f"{outcome.fine_tuned_model} {verdict} {champion}: {decision.reason}")
    console.print(f'try: [bold]loraflow complete {champion} "Where is my order?"[/bold]')
    console.print(f"demo took {time.monotonic() - started:.0f} s")


def _show(console: Console, outcome: object, before: list[str], after: list[str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    run_id = outcome.mlflow_run_id  # type: ignore[attr-defined]
    losses = client.get_metric_history(run_id, "loss")
    evals = client.get_metric_history(run_id, "eval_loss")
    curve = Table("step", "training loss", title="loss (response tokens)")
    for m in losses[:: max(1, len(losses) // 8)] + losses[-1:]:
        curve.add_row(str(m.step), f"{m.value:.3f}")
    console.print(curve)
    console.print("validation loss by epoch: " + ", ".join(f"{m.value:.3f}" for m in evals))
    table = Table("prompt", Column("before", overflow="fold"), Column("after", overflow="fold"))
    for prompt, old, new in zip(PROMPTS, before, after, strict=True):
        table.add_row(prompt, old, new)
    console.print(table)
    console.print(f"fine-tuned model [bold]{outcome.fine_tuned_model}[/bold]")  # type: ignore[attr-defined]
    tracking_uri = get_settings().tracking_uri
    console.print(
        f"MLflow: [bold]mlflow ui --backend-store-uri {tracking_uri}[/bold] "
        f"(run {run_id});  Prefect: [bold]make up[/bold] starts its UI; runs made while the "
        "stack is up show there."
    )


if __name__ == "__main__":
    run()
