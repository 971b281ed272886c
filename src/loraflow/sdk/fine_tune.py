"""``FineTune``: start, watch, cancel and wait for fine-tunes, as LLM Engine's client does.

Each job is a Prefect flow run of the ``fine-tune/train-lora-adapter`` deployment named by its
``ft-`` id, so every job is visible (and cancellable) in the Prefect UI too.
"""

from __future__ import annotations

import ast
import logging
import re
from typing import Any

from loraflow import jobs
from loraflow.errors import LoraflowError
from loraflow.fine_tuning import (
    ENTRYPOINT,
    FLOW_NAME,
    JOB_IDS,
    TAG,
    FineTuneRequest,
    check_request,
    model_name,
)
from loraflow.jobs import cancel_job_run, find_job_run, prefect_client, start_job
from loraflow.sdk.types import (
    CancelFineTuneResponse,
    CreateFineTuneResponse,
    FineTuneProgress,
    GetFineTuneEventsResponse,
    GetFineTuneResponse,
    ListFineTunesResponse,
    LLMFineTuneEvent,
)
from loraflow.training.hyperparameters import parse_hyperparameters

LOG_PAGE = 200


class FineTuneTimeoutError(jobs.JobTimeoutError):
    """``FineTune.wait`` ran out of time; the job goes on."""


def _client() -> Any:
    return prefect_client()


def _run(client: Any, job_id: str) -> Any:
    return find_job_run(client, JOB_IDS.check(job_id), TAG, "fine-tune")


def _response(run: Any) -> GetFineTuneResponse:
    config = run.parameters.get("config") or {}
    return GetFineTuneResponse(
        id=run.name,
        fine_tuned_model=config.get("fine_tuned_model"),
        status=jobs.fine_tune_status(run.state),
    )


def _state_message(state: Any) -> str:
    """``status: RUNNING (Running)``, plus Prefect's message when it has one."""
    text = f"status: {jobs.fine_tune_status(state)} ({state.name})"
    return f"{text}: {state.message}" if state.message else text


class FineTune:
    """Fine-tune jobs. Every method is a classmethod, as in LLM Engine's client."""

    @classmethod
    def create(
        cls,
        model: str,
        training_file: str,
        validation_file: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        wandb_config: dict[str, Any] | None = None,
        suffix: str | None = None,
    ) -> CreateFineTuneResponse:
        """Check the request and start the job; returns at once with its id, never waits.

        Raises InvalidRequestError / NotFoundError before anything starts when the base model,
        a file, a hyperparameter or the suffix is wrong.
        """
        if wandb_config:
            raise LoraflowError("wandb_config is not supported: loraflow tracks runs in MLflow")
        request = FineTuneRequest(
            model=model,
            training_file=training_file,
            validation_file=validation_file,
            hyperparameters=parse_hyperparameters(hyperparameters),  # errors name the field
            suffix=suffix,
        )
        checked = check_request(request)
        request.fine_tuned_model = model_name(checked.spec.name, suffix)
        job_id = JOB_IDS.new()
        start_job(FLOW_NAME, {"config": request.model_dump(mode="json")}, job_id, TAG)
        return CreateFineTuneResponse(id=job_id)

    @classmethod
    def get(cls, fine_tune_id: str) -> GetFineTuneResponse:
        """Status and output model name of a job. Raises NotFoundError."""
        with _client() as client:
            return _response(_run(client, fine_tune_id))

    @classmethod
    def list(cls) -> ListFineTunesResponse:
        """Every fine-tune job, oldest first."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
        from prefect.client.schemas.sorting import FlowRunSort

        with _client() as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[TAG])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
        return ListFineTunesResponse(jobs=[_response(r) for r in runs])

    @classmethod
    def cancel(cls, fine_tune_id: str) -> CancelFineTuneResponse:
        """Ask the job to stop; it checkpoints and ends CANCELLED. False if already finished."""
        with _client() as client:
            return CancelFineTuneResponse(
                success=cancel_job_run(client, _run(client, fine_tune_id))
            )

    @classmethod
    def progress(cls, fine_tune_id: str) -> FineTuneProgress:
        """How far a job has come: step of all, epoch, latest losses, an estimate of the time
        left, and its Prefect and MLflow pages. Not in LLM Engine's client."""
        from prefect.settings import PREFECT_UI_URL

        from loraflow import tracking
        from loraflow.settings import get_settings

        with _client() as client:
            run = _run(client, fine_tune_id)
            events = _events(client, run).events
        status = jobs.fine_tune_status(run.state)
        history: list[dict[str, float]] = []
        times: list[float] = []
        total = run_id = None
        for event in events:
            if (values := metrics_of(event.message)) is not None:
                history.append(values)
                times.append(event.timestamp or 0.0)
            elif found := re.match(r"training: (\d+) steps", event.message):
                total = int(found.group(1))  # a resumed run says it again: the last counts
            elif found := re.search(r"MLflow run ([0-9a-f]{32})", event.message):
                run_id = found.group(1)
        last = history[-1] if history else {}
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        eta = None
        if (
            status == "RUNNING"
            and total
            and len(history) >= 2
            and history[-1]["step"] > history[0]["step"]
        ):
            pace = (times[-1] - times[0]) / (history[-1]["step"] - history[0]["step"])
            eta = max(total - history[-1]["step"], 0) * pace
        ui = PREFECT_UI_URL.value()
        settings = get_settings()
        mlflow_ui = (
            settings.tracking_uri
            if settings.tracking_uri.startswith("http")
            else jobs.stack_url(settings, "mlflow")
        )
        return FineTuneProgress(
            id=fine_tune_id,
            status=status,
            step=int(last["step"]) if "step" in last else None,
            total_steps=total,
            epoch=last.get("epoch"),
            loss=next((h["loss"] for h in reversed(history) if "loss" in h), None),
            eval_loss=evals[-1] if evals else None,
            eta_seconds=eta,
            prefect_url=f"{ui}/runs/flow-run/{run.id}" if ui else None,
            mlflow_run_id=run_id,
            mlflow_url=tracking.run_url(run_id, mlflow_ui, settings)
            if run_id and mlflow_ui
            else None,
            history=history,
        )

    @classmethod
    def get_events(cls, fine_tune_id: str) -> GetFineTuneEventsResponse:
        """The job's state changes and log: lifecycle messages and one line of metrics a step."""
        with _client() as client:
            return _events(client, _run(client, fine_tune_id))

    @classmethod
    def wait(cls, fine_tune_id: str, timeout: float | None = None) -> GetFineTuneResponse:
        """Poll until the job ends (SUCCESS, FAILURE or CANCELLED) and return its status.

        Polls after 0.2 s, then 10 % longer each time, at most 60 s apart. Raises
        FineTuneTimeoutError after ``timeout`` seconds (the job goes on).
        """
        last: list[GetFineTuneResponse] = []

        def check() -> GetFineTuneResponse | None:
            last[:] = [cls.get(fine_tune_id)]
            return last[0] if last[0].status in jobs.ENDED else None

        try:
            return jobs.poll(check, timeout, lambda: f"{fine_tune_id} is still {last[0].status}")
        except jobs.JobTimeoutError as exc:
            raise FineTuneTimeoutError(str(exc)) from None

    @classmethod
    def resume(cls, fine_tune_id: str) -> GetFineTuneResponse:
        """Run a FAILURE (a killed worker or process, an error) again, under the same job id;
        it continues from its last checkpoint. Not in LLM Engine's client.

        A job a deployment started goes back to its work pool (as Retry in the Prefect UI
        does) and this returns at once; a job started from Python (``fine_tune(...)``) runs
        again here, in this process, and this returns when it ends.
        """
        from prefect.states import AwaitingRetry

        with _client() as client:
            run = _run(client, fine_tune_id)
            if _response(run).status != "FAILURE":
                raise LoraflowError(
                    f"{fine_tune_id} is {_response(run).status}; only a FAILURE resumes"
                )
            if run.deployment_id is None:
                jobs.rerun_here(client, run, ENTRYPOINT)
            else:
                client.set_flow_run_state(run.id, AwaitingRetry(), force=True)
            return _response(client.read_flow_run(run.id))


def _events(client: Any, run: Any) -> GetFineTuneEventsResponse:
    """A job run's state changes and log lines, oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    events = [
        (s.timestamp.timestamp(), _state_message(s), "info")
        for s in client.read_flow_run_states(run.id)
    ]
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
    offset = 0
    while page := client.read_logs(
        log_filter=log_filter, limit=LOG_PAGE, offset=offset, sort=LogSort.TIMESTAMP_ASC
    ):
        events += [
            (log.timestamp.timestamp(), log.message, logging.getLevelName(log.level).lower())
            for log in page
        ]
        offset += len(page)
    events.sort(key=lambda e: e[0])
    return GetFineTuneEventsResponse(
        events=[LLMFineTuneEvent(timestamp=t, message=m, level=lv) for t, m, lv in events]
    )


def metrics_of(message: str) -> dict[str, float] | None:
    """A fine-tune event's metrics (a step's line: ``{'loss': ..., 'epoch': ..., 'step': ...}``),
    or None for any other event."""
    if not message.startswith("{"):
        return None
    try:
        value = ast.literal_eval(message)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict) or "step" not in value:
        return None
    return {k: float(v) for k, v in value.items() if isinstance(v, int | float)}
