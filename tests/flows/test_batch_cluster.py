"""The batch flow on a real Dask cluster (prefect-dask): 2 local worker processes write what
one process writes; a job run again takes its chunks from the cache; a worker killed mid-chunk
costs a redo, not the job; a cluster that does not answer fails before anything runs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows.batch_complete import batch_complete
from loraflow import batch
from loraflow.batch import BatchCompleteConfig
from loraflow.errors import ConfigError
from loraflow.settings import reset
from loraflow.storage import get_store
from tests.helpers import write

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]
MODEL = "tiny-llama-test"


def prompts_file(tmp_path: Path, count: int) -> str:
    lines = "".join(
        json.dumps({"prompt": f"Question {i}: where is order {i}?"}) + "\n" for i in range(count)
    )
    return str(write(tmp_path, "prompts.jsonl", lines))


def stored(job_id: str) -> list[dict[str, Any]]:
    data = get_store().get_bytes(f"batch-completions/{job_id}/results.jsonl")
    return [json.loads(line) for line in data.decode().splitlines()]


def chunk_states(flow_run_id: Any, count: int = 4) -> list[str]:
    """The chunk tasks' final states, once the API has all ``count`` of them (task run states
    reach Prefect's API as events, a moment after the flow returns); at most 30 s."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter, TaskRunFilterName

    from loraflow.jobs import poll

    seen: list[str] = []

    def check() -> list[str] | None:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="generate-chunk")),
        )
        states = [r.state for r in runs if r.state is not None]
        seen[:] = sorted(str(s.name) for s in states)
        return seen if len(states) == count and all(s.is_final() for s in states) else None

    with get_client(sync_client=True) as client:
        return poll(check, 30, lambda: f"the chunk tasks' states are {seen}")


def test_two_local_workers_write_what_one_process_writes(tmp_path: Path) -> None:
    config = BatchCompleteConfig(
        model=MODEL,
        input_data_path=prompts_file(tmp_path, 10),
        max_new_tokens=8,
        temperature=0,
        batch_size=3,
        chunk_size=3,
        workers=2,
    )
    alone = batch.run(config, "batch-reference")
    name = batch.JOB_IDS.new()
    state = batch_complete.with_options(flow_run_name=name)(config, return_state=True)
    together = state.result()
    assert together.inputs == 10 and together.completion_tokens == alone.completion_tokens
    assert stored(together.job_id) == stored(alone.job_id)
    assert [r["index"] for r in stored(together.job_id)] == list(range(10))
    assert chunk_states(state.state_details.flow_run_id) == ["Completed"] * 4

    # the same job again (a retry, here in the flow's own process): every chunk comes from
    # the cache, the output is the same
    in_process = config.model_copy(update={"workers": 1})
    again = batch_complete.with_options(flow_run_name=name)(in_process, return_state=True)
    assert chunk_states(again.state_details.flow_run_id) == ["Cached"] * 4
    assert stored(again.result().job_id) == stored(alone.job_id)


def test_a_worker_killed_mid_chunk_costs_a_redo_not_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster

    config = BatchCompleteConfig(
        model=MODEL,
        input_data_path=prompts_file(tmp_path, 12),
        max_new_tokens=48,
        temperature=0,
        batch_size=2,
        chunk_size=2,
    )
    reference = batch.run(config, "batch-reference-2")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        monkeypatch.setenv("LORAFLOW_BATCH__CLUSTER_ADDRESS", cluster.scheduler_address)
        reset()
        outcome: dict[str, Any] = {}
        job = threading.Thread(
            target=lambda: outcome.update(state=batch_complete(config, return_state=True))
        )
        job.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                time.sleep(0.5)  # well inside the chunk
                os.kill(pid, signal.SIGKILL)
                killed = pid
            time.sleep(0.1)
        job.join(timeout=300)
        assert killed is not None, "no chunk ever ran: nothing was tested"
    state = outcome["state"]
    assert state.is_completed(), state
    assert stored(state.result().job_id) == stored(reference.job_id)


def test_a_cluster_that_does_not_answer_fails_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = BatchCompleteConfig(model=MODEL, input_data_path=prompts_file(tmp_path, 2))
    monkeypatch.setenv("LORAFLOW_BATCH__CLUSTER_ADDRESS", "tcp://127.0.0.1:9")
    reset()
    with pytest.raises(ConfigError, match=r"batch\.cluster_address: no Dask scheduler answers"):
        batch_complete(config)
    monkeypatch.delenv("LORAFLOW_BATCH__CLUSTER_ADDRESS")
    reset()
    with pytest.raises(ConfigError, match="workers: 64 local workers, but this machine has"):
        batch_complete(config.model_copy(update={"workers": 64}))
    assert not [k for k in get_store().list("batch-completions/") if "reference" not in k]
