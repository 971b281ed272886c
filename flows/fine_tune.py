"""Flow: fine-tune a base model with LoRA on stored files; one flow run per fine-tune job.

``FineTune.create`` starts it as a run of the ``fine-tune/train-lora-adapter`` deployment named by
the job id; it also runs from the Prefect UI, on a schedule, or from Python:
``fine_tune(FineTuneRequest(training_file="file-…"))``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Cancelled

from loraflow.fine_tuning import (
    FLOW_NAME,
    JOB_IDS,
    TAG,
    FineTuneRequest,
    check_request,
    model_name,
)
from loraflow.heartbeat import beating
from loraflow.jobs import job_identity, pin_parameters
from tasks.fine_tune import prepare_base_model, train_adapter
from tasks.registry import register_model


@flow(name=FLOW_NAME, log_prints=True)
def fine_tune(config: FineTuneRequest) -> Any:
    """Check the request, prepare the base model, train, register; returns the ModelRecord,
    or CANCELLED if cancelled."""
    job_id = job_identity(JOB_IDS, TAG)
    with beating(job_id):  # a killed process leaves a run that `get` shows as crashed
        return _fine_tune(config, job_id)


def _fine_tune(config: FineTuneRequest, job_id: str) -> Any:
    from loraflow.training.loop import TrainingCancelled

    logger = get_run_logger()
    checked = check_request(config)
    if config.fine_tuned_model is None:
        config = config.model_copy(
            update={"fine_tuned_model": model_name(checked.spec.name, config.suffix)}
        )
        checked = checked.model_copy(update={"request": config})
        pin_parameters({"config": config.model_dump(mode="json")})  # a rerun keeps the name
    logger.info(f"fine-tune {job_id}: {config.model} -> {config.fine_tuned_model}")
    prepare_base_model(config.model)
    try:
        trained = train_adapter(checked, job_id)
    except TrainingCancelled as exc:
        logger.info(str(exc))
        return Cancelled(message=str(exc))
    record = register_model(trained)
    logger.info(
        f"fine-tune {job_id} succeeded: fine-tuned model {record.fine_tuned_model} is ready "
        f"(registered as {record.registered_model} version {record.version})"
    )
    return record


if __name__ == "__main__":
    import sys

    from flows import main

    main(fine_tune, sys.argv)
