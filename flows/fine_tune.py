"""Flow: fine-tune a base model with LoRA on stored files; one flow run per fine-tune job.

``FineTune.create`` starts it as a run of the ``fine-tune/loraflow`` deployment named by the
job id; it also runs from the Prefect UI, on a schedule, or from Python:
``fine_tune(FineTuneRequest(training_file="file-…"))``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Cancelled

from loraflow.fine_tuning import (
    FLOW_NAME,
    JOB_ID,
    TAG,
    FineTuneRequest,
    check_request,
    model_name,
    new_job_id,
)
from tasks.fine_tune import prepare_base_model, train_adapter
from tasks.registry import register_model


def job_identity() -> str:
    """This run's job id: its name when started by FineTune.create, else a new one it takes."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    name = str(flow_run.name or "")
    if JOB_ID.match(name):
        return name
    job_id = new_job_id()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, name=job_id, tags=sorted({*run.tags, TAG}))
    return job_id


@flow(name=FLOW_NAME, log_prints=True)
def fine_tune(config: FineTuneRequest = FineTuneRequest()) -> Any:  # noqa: B008
    """Check the request, prepare the base model, train, register; CANCELLED if cancelled."""
    from loraflow.training.loop import TrainingCancelled

    logger = get_run_logger()
    job_id = job_identity()
    checked = check_request(config)
    if config.fine_tuned_model is None:
        config = config.model_copy(
            update={"fine_tuned_model": model_name(checked.spec.name, config.suffix)}
        )
        checked = checked.model_copy(update={"request": config})
    logger.info(f"fine-tune {job_id}: {config.model} -> {config.fine_tuned_model}")
    prepare_base_model(config.model)
    try:
        outcome = train_adapter(checked, job_id)
    except TrainingCancelled as exc:
        logger.info(str(exc))
        return Cancelled(message=str(exc))
    register_model(outcome.fine_tuned_model)
    logger.info(f"fine-tune {job_id} succeeded: {outcome.fine_tuned_model}")
    return outcome
