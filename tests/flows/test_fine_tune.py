"""Fine-tune jobs end to end: FineTune SDK -> Prefect deployment -> a real runner process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from loraflow import Completion, FineTune, InvalidRequestError, Model, NotFoundError
from loraflow.cli import app
from loraflow.errors import LoraflowError
from loraflow.integrations import aixplain
from loraflow.jobs import deployment_name
from loraflow.settings import reset
from loraflow.storage import get_store
from tests.helpers import write

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]
TINY = {"epochs": 2, "batch_size": 4, "lr": 0.01}


@pytest.fixture(scope="module")
def job_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One loraflow home for this module, shared with the runner process."""
    return tmp_path_factory.mktemp("ft-home")


@pytest.fixture(autouse=True)
def use_job_home(job_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_HOME", str(job_home))
    reset()


@pytest.fixture(scope="module")
def runner(prefect_harness: None, job_home: Path, models_dir: Path) -> Iterator[subprocess.Popen]:
    """`loraflow worker` in its own process, serving the deployments to the harness's API."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLOW_")}
    env |= {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "LORAFLOW_HOME": str(job_home),
        "LORAFLOW_MODELS_DIR": str(models_dir),
    }
    log = (job_home / "runner.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "worker", "--limit", "2", "--poll", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while True:
            try:
                for name in ("fine-tune", "ingest", "batch-complete", "promote"):
                    client.read_deployment_by_name(deployment_name(name))
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((job_home / "runner.log").read_text()[-3000:]) from None
                time.sleep(0.5)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def training_file(tmp_path: Path) -> str:
    rows = "\n".join(f"How do I do thing {i}?,You do thing {i} in Settings." for i in range(40))
    return FineTune_upload(write(tmp_path, "train.csv", "prompt,response\n" + rows + "\n"))


def FineTune_upload(path: Path) -> str:
    from loraflow import File

    return File.upload(path).id


def flow_run_id(job_id: str) -> object:
    from loraflow.jobs import prefect_client

    with prefect_client() as client:
        runs = client.read_flow_runs()
    return next(r.id for r in runs if r.name == job_id)


def messages(job_id: str) -> list[str]:
    return [e.message for e in FineTune.get_events(job_id).events]


def wait_for_event(job_id: str, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in messages(job_id) if re.search(pattern, m)]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no event matching {pattern!r} for {job_id}: {messages(job_id)[-10:]}")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "no-such-model"}, InvalidRequestError, "unknown base model"),
        ({"hyperparameters": {"learning_rate": 1}}, InvalidRequestError, "known: lr"),
        ({"hyperparameters": {"epochs": 50}}, InvalidRequestError, "epochs"),
        (
            {"hyperparameters": {"peft_config": {"lora_alpha": "x"}}},
            InvalidRequestError,
            "lora_alpha",
        ),
        ({"training_file": "file-doesnotexist0000"}, NotFoundError, "Training file does not exist"),
        ({"training_file": "../etc/passwd"}, InvalidRequestError, "training_file"),
        ({"validation_file": "file-doesnotexist0000"}, NotFoundError, "Validation file"),
        ({"suffix": "has spaces"}, InvalidRequestError, "suffix is invalid"),
        ({"suffix": "x" * 29}, InvalidRequestError, "at most 28"),
    ],
)
def test_bad_requests_fail_before_any_run_starts(
    runner: subprocess.Popen, training_file: str, kwargs: dict, error: type, match: str
) -> None:
    before = len(FineTune.list().jobs)
    args = {"model": "tiny-llama-test", "training_file": training_file, **kwargs}
    with pytest.raises(error, match=match):
        FineTune.create(**args)
    assert len(FineTune.list().jobs) == before


def test_unknown_job_ids(runner: subprocess.Popen) -> None:
    with pytest.raises(NotFoundError, match="could not be found"):
        FineTune.get("ft-aaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(InvalidRequestError):
        FineTune.get("ft-../x")


def test_fine_tune_runs_to_success_with_events_tracking_and_outputs(
    runner: subprocess.Popen, training_file: str
) -> None:
    job = FineTune.create("tiny-llama-test", training_file, hyperparameters=TINY, suffix="support")
    assert re.fullmatch(r"ft-[a-z0-9]{20}", job.id)
    assert FineTune.get(job.id).status in {"PENDING", "RUNNING"}  # create never waits

    done = FineTune.wait(job.id, timeout=180)
    assert done.status == "SUCCESS", messages(job.id)[-20:]
    assert re.fullmatch(r"tiny-llama-test\.support\.\d{6}-\d{6}", done.fine_tuned_model)
    assert job.id in [j.id for j in FineTune.list().jobs]

    wait_for_event(job.id, r"succeeded")  # logs reach the API in batches, just after the state
    events = FineTune.get_events(job.id).events
    metric_lines = [e for e in events if e.message.startswith("{'loss'")]
    assert len(metric_lines) == 2 * 9  # 36 training rows (4 split off), batches of 4
    assert all(e.timestamp and e.level == "info" for e in metric_lines)
    assert [m for m in messages(job.id) if m.startswith("status: ")][-1].startswith(
        "status: SUCCESS (Completed)"
    )
    assert any("is ready" in m for m in messages(job.id))

    record = json.loads(get_store().get_bytes(f"models/{done.fine_tuned_model}.json"))
    assert record["job_id"] == job.id and record["base_model"] == "tiny-llama-test"
    assert get_store().exists(f"fine-tunes/{job.id}/adapter/adapter_model.safetensors")
    mlflow.set_tracking_uri(f"sqlite:///{Path(os.environ['LORAFLOW_HOME']) / 'mlflow.db'}")
    run = mlflow.get_run(record["mlflow_run_id"])
    assert run.data.params["training_file"] == training_file
    assert run.data.params["base_model"] == "tiny-llama-test"
    assert run.data.params["lr"] == "0.01"
    assert len(run.data.params["training_sha256"]) == 64
    assert run.data.tags["loraflow.job_id"] == job.id
    assert "prefect.flow_run_id" in run.data.tags
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(history) == 18
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "loss_curve.png" in artifacts

    model = Model.get(done.fine_tuned_model)  # registered by the worker, served here
    assert model.registered_model == "tiny-llama-test.support" and model.version >= 1
    assert Model.get(f"tiny-llama-test.support/{model.version}").name == done.fine_tuned_model
    assert Completion.create(done.fine_tuned_model, "How do I do thing 3?", 8, 0).output.text

    # the shell's view: progress in `get`, every event, `wait` on an ended job
    progress = FineTune.progress(job.id)
    assert (progress.status, progress.step, progress.total_steps) == ("SUCCESS", 18, 18)
    assert progress.epoch == 2.0 and progress.loss == pytest.approx(history[-1].value, abs=1e-6)
    assert progress.eval_loss is not None and progress.eta_seconds is None
    assert progress.mlflow_run_id == record["mlflow_run_id"] and len(progress.history) == 18
    assert progress.prefect_url and progress.prefect_url.endswith(str(flow_run_id(job.id)))
    cli = CliRunner()
    shown = json.loads(cli.invoke(app, ["fine-tunes", "get", job.id]).stdout)
    assert shown["fine_tuned_model"] == done.fine_tuned_model and shown["step"] == 18
    assert shown["mlflow_run_id"] == record["mlflow_run_id"]
    followed = cli.invoke(app, ["fine-tunes", "events", job.id, "--follow"])
    assert followed.exit_code == 0 and "training: 18 steps" in followed.stdout
    assert followed.stdout.count("{'loss'") == 18
    waited = cli.invoke(app, ["fine-tunes", "wait", job.id])
    assert waited.exit_code == 0 and f"{job.id}: SUCCESS" in waited.stdout

    # aiXplain's view of the same job: its model, status and losses, latest or after an epoch
    handle = aixplain.LLM.from_fine_tune(job.id)
    assert handle.id == done.fine_tuned_model and handle.run("Hi", max_tokens=4).completed
    latest = handle.check_finetune_status()
    assert (latest.status, latest.model_status, latest.epoch) == ("completed", "onboarded", 2.0)
    assert latest.training_loss == pytest.approx(history[-1].value, abs=1e-6)
    assert latest.validation_loss is not None
    after = handle.check_finetune_status(after_epoch=1)
    assert after.epoch is not None and 1 < after.epoch <= 1.2
    assert after.training_loss == pytest.approx(history[9].value, abs=1e-6)  # epoch 2, step 1
    with pytest.raises(LoraflowError, match="not a fine-tune's handle"):
        aixplain.LLM(done.fine_tuned_model).check_finetune_status()


def wait_batch(job_id: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Completion.get_batch_completion(job_id).job
        if job.status in {"completed", "failed", "cancelled"}:
            return job
        time.sleep(0.5)
    raise AssertionError(f"batch job {job_id} still {job.status} after {timeout} s")


def test_batch_completion_job_runs_on_the_worker(runner: subprocess.Popen, tmp_path: Path) -> None:
    source = write(tmp_path, "prompts.csv", "prompt\nHi\nWhere is my order?\nThanks\n")
    job_id = Completion.batch_create("tiny-llama-test", str(source), max_new_tokens=5).job_id
    assert re.fullmatch(r"batch-[a-z0-9]{20}", job_id)
    assert Completion.get_batch_completion(job_id).job.status in {"queued", "running", "completed"}
    job = wait_batch(job_id)
    assert job.status == "completed" and job.num_inputs == 3 and job.completed_at
    key = f"batch-completions/{job_id}/results.jsonl"
    assert job.output_data_path.endswith(key)
    rows = [json.loads(line) for line in get_store().get_bytes(key).splitlines()]
    expected = Completion.generate(
        "tiny-llama-test", ["Hi", "Where is my order?", "Thanks"], max_new_tokens=5, temperature=0
    )
    assert [r["generations"] for r in rows] == [e.generations for e in expected]
    assert Completion.cancel_batch_completion(job_id).success is False  # already ended


def test_distilabel_offline_batch_generation_runs_as_a_batch_job(
    runner: subprocess.Popen, tmp_path: Path
) -> None:
    from distilabel.exceptions import DistilabelOfflineBatchGenerationNotFinishedException
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    from loraflow.integrations.distilabel import LoraflowLLM, root_logging_kept

    prompts = ["Hi", "Where is my order?", "Thanks"]
    greedy = {"max_new_tokens": 5, "temperature": 0.0}
    chats = [[{"role": "user", "content": p}] for p in prompts]
    llm = LoraflowLLM(model="tiny-llama-test", use_offline_batch_generation=True)
    llm.load()
    with pytest.raises(DistilabelOfflineBatchGenerationNotFinishedException) as first:
        llm.offline_batch_generate(chats, num_generations=2, **greedy)
    (job_id,) = first.value.jobs_ids
    assert llm.jobs_ids == (job_id,) and job_id.startswith("batch-")
    with pytest.raises(DistilabelOfflineBatchGenerationNotFinishedException):
        llm.offline_batch_generate()  # not done yet: it was just submitted
    assert wait_batch(job_id).status == "completed"
    outputs = llm.offline_batch_generate()
    expected = Completion.generate("tiny-llama-test", prompts, 2, **greedy)
    assert [o["generations"] for o in outputs] == [e.generations for e in expected]
    assert [o["statistics"]["output_tokens"] for o in outputs] == [[5, 5]] * 3

    # in a pipeline: the step waits for the job, polling every second
    with Pipeline(name="loraflow-offline", cache_dir=tmp_path / "cache") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts])
        offline = LoraflowLLM(
            model="tiny-llama-test",
            generation_kwargs=greedy,
            use_offline_batch_generation=True,
            offline_batch_generation_block_until_done=1,
        )
        load >> TextGeneration(llm=offline, num_generations=2, group_generations=True)
    with root_logging_kept():  # the run takes the root logger over (see there)
        rows = pipeline.run(use_cache=False)["default"]["train"].to_list()
    assert [r["generation"] for r in rows] == [e.generations for e in expected]


def test_batch_completion_job_cancels_and_writes_nothing(
    runner: subprocess.Popen, tmp_path: Path
) -> None:
    lines = "".join(f"Tell me about item {i}\n" for i in range(3000))
    source = write(tmp_path, "many.csv", "prompt\n" + lines)
    job_id = Completion.batch_create(
        "tiny-llama-test", str(source), max_new_tokens=64, batch_size=4
    ).job_id
    deadline = time.monotonic() + 60
    while Completion.get_batch_completion(job_id).job.status == "queued":
        assert time.monotonic() < deadline, "the batch job never started"
        time.sleep(0.2)
    assert Completion.cancel_batch_completion(job_id).success is True  # while it runs
    job = wait_batch(job_id, timeout=90)
    assert job.status == "cancelled"
    assert not get_store().exists(f"batch-completions/{job_id}/results.jsonl")
    with pytest.raises(InvalidRequestError, match="batch job id"):
        Completion.get_batch_completion("ft-nope")
    with pytest.raises(NotFoundError, match="batch completion job"):
        Completion.get_batch_completion("batch-" + "0" * 20)
    with pytest.raises(InvalidRequestError, match="temperature"):
        Completion.batch_create("tiny-llama-test", str(source), temperature=2)


def test_cancel_checkpoints_and_ends_cancelled(
    runner: subprocess.Popen, training_file: str
) -> None:
    job = FineTune.create(
        "tiny-llama-test", training_file, hyperparameters={**TINY, "epochs": 19, "batch_size": 1}
    )
    wait_for_event(job.id, r"^\{'loss'.*'step': [3-9]")
    running = FineTune.progress(job.id)  # mid-run: where it is, and an estimate of the rest
    assert running.status == "RUNNING" and running.total_steps == 19 * 36
    assert running.step is not None and running.step >= 3 and running.eta_seconds is not None
    assert FineTune.cancel(job.id).success is True
    done = FineTune.wait(job.id, timeout=60)
    assert done.status == "CANCELLED"
    stopped = wait_for_event(job.id, r"cancelled at step \d+")
    step = int(re.search(r"step (\d+)", stopped).group(1))
    assert step < 19 * 36
    latest = json.loads(get_store().get_bytes(f"fine-tunes/{job.id}/checkpoints/latest.json"))
    assert latest["step"] == step
    assert FineTune.cancel(job.id).success is False  # already ended


@pytest.mark.reliability  # SIGKILL under a worker; its in-process twin is in tests/reliability
def test_killed_run_resumes_from_its_checkpoint(
    runner: subprocess.Popen, training_file: str
) -> None:
    job = FineTune.create(
        "tiny-llama-test",
        training_file,
        hyperparameters={**TINY, "epochs": 6, "batch_size": 1, "save_every": 10},
    )
    pid = int(re.search(r"process (\d+)", wait_for_event(job.id, r"training in process")).group(1))
    wait_for_event(job.id, r"checkpoint saved at step 20")
    os.kill(pid, signal.SIGKILL)
    assert FineTune.wait(job.id, timeout=60).status == "FAILURE"

    assert FineTune.resume(job.id).status == "PENDING"
    done = FineTune.wait(job.id, timeout=180)
    assert done.status == "SUCCESS", messages(job.id)[-20:]
    resumed = wait_for_event(job.id, r"resumed from the checkpoint at step")
    assert int(resumed.rsplit(" ", 1)[1]) >= 20


def test_failure_inside_training_ends_failure_with_the_cause(
    runner: subprocess.Popen, training_file: str
) -> None:
    job = FineTune.create(
        "tiny-llama-test", training_file, hyperparameters={**TINY, "max_length": 8}
    )
    assert FineTune.wait(job.id, timeout=120).status == "FAILURE"
    assert any("no training example has response tokens" in m for m in messages(job.id))
