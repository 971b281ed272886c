"""Data-parallel fine-tunes under a real ``accelerate launch``: 2 CPU processes on gloo.

Two processes with a per-process batch of b/2 take the steps of one process with b; only the
main process writes; a cancel reaches every process; bad settings fail before anything runs.
(FSDP needs GPUs: accelerate's FSDP plugin refuses CPU processes, so it is refused here too.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.errors import ConfigError, InvalidRequestError
from loraflow.training.distributed import CONFIGS, Distributed, check_capacity, shard
from loraflow.training.hyperparameters import parse_hyperparameters
from loraflow.training.launch import accelerate_command, run_launched
from loraflow.training.loop import Trainer, TrainingCancelled
from tests.training.conftest import RecordingReporter

pytestmark = pytest.mark.slow
NO_DROPOUT = {"peft_config": {"lora_dropout": 0}}  # dropout masks differ by process count


def test_two_processes_with_half_batches_take_the_steps_of_one(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    one = RecordingReporter()
    alone = Trainer(tiny_plan(out="one", batch_size=4, **NO_DROPOUT), one).run()

    plan = tiny_plan(out="two", batch_size=2, distributed={"num_processes": 2}, **NO_DROPOUT)
    plan.checkpoints.prefix = "fine-tunes/ft-two/checkpoints"
    two = RecordingReporter()
    together = run_launched(plan, two)

    assert two.total_steps == one.total_steps == together.steps == alone.steps == 28
    assert two.history[0][1]["loss"] == pytest.approx(one.history[0][1]["loss"], rel=1e-5)
    assert two.history[0][1]["tokens_per_second"] > 0
    assert together.train_loss == pytest.approx(alone.train_loss, rel=0.01)
    assert together.eval_loss == pytest.approx(alone.eval_loss, rel=0.01)
    assert [s for s, _ in two.history] == list(range(1, 29))  # one report a step: the main's
    assert ("info", "training on 2 processes (ddp) under accelerate launch") in two.events
    saved = [m for _, m in two.events if m.startswith("checkpoint saved")]
    assert len(saved) == 2  # written once per checkpoint, by the main process
    assert plan.checkpoints.latest().step == 28
    assert (together.adapter_dir / "adapter_model.safetensors").is_file()


def test_a_cancel_reaches_every_process_after_a_checkpoint(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    # 513 steps: the stop, relayed every 0.5 s, lands long before the end on a loaded machine
    plan = tiny_plan(
        out="stop", batch_size=2, epochs=19, save_every=1000, distributed={"num_processes": 2}
    )
    plan.checkpoints.prefix = "fine-tunes/ft-stop/checkpoints"
    reporter = RecordingReporter(stop_at=2)
    with pytest.raises(TrainingCancelled) as caught:
        run_launched(plan, reporter)
    step = caught.value.step
    assert 2 <= step < 500 and plan.checkpoints.latest().step == step

    # (a 2-process job resuming from its checkpoint: tests/reliability/test_killed_jobs.py)


def test_a_failing_worker_names_its_error(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    plan = tiny_plan(out="bad", max_length=8, distributed={"num_processes": 2})
    with pytest.raises(Exception, match="no training example has response tokens"):
        run_launched(plan, RecordingReporter())


def test_bad_settings_fail_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"distributed.num_processes: 64 process\(es\)"):
        check_capacity(Distributed(num_processes=64))
    with pytest.raises(ConfigError, match=r"distributed\.strategy: fsdp needs GPUs"):
        check_capacity(Distributed(num_processes=2, strategy="fsdp"))
    with pytest.raises(
        ConfigError, match=r"distributed\.config_file: .*nowhere\.yaml is not a file"
    ):
        check_capacity(Distributed(config_file=Path("nowhere.yaml")))
    with pytest.raises(ConfigError, match="fsdp needs GPUs"):  # read from the config file
        check_capacity(Distributed(config_file=CONFIGS / "fsdp.yaml", num_processes=2))
    with pytest.raises(InvalidRequestError, match=r"distributed\.strategy: Input should be 'ddp'"):
        parse_hyperparameters({"distributed": {"num_processes": 2, "strategy": "zero3"}})
    with pytest.raises(InvalidRequestError, match="main_process_ip is required"):
        parse_hyperparameters({"distributed": {"num_processes": 4, "num_machines": 2}})
    with pytest.raises(InvalidRequestError, match="split evenly over num_machines"):
        parse_hyperparameters(
            {"distributed": {"num_processes": 3, "num_machines": 2, "main_process_ip": "h"}}
        )
    check_capacity(Distributed(num_processes=2))  # this machine has 2 cores


def test_the_shipped_accelerate_configs_load_and_drive_the_command(tmp_path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {
        p.stem: str(load_config_from_file(str(p)).distributed_type) for p in CONFIGS.glob("*.yaml")
    }
    assert kinds == {
        "one_gpu": "DistributedType.NO",
        "ddp": "DistributedType.MULTI_GPU",
        "fsdp": "DistributedType.FSDP",
        "multi_node": "DistributedType.MULTI_GPU",
    }
    with_file = Distributed(config_file=CONFIGS / "multi_node.yaml", machine_rank=1)
    command = accelerate_command(with_file, tmp_path, port=1234)
    assert command[command.index("--config_file") + 1].endswith("multi_node.yaml")
    assert command[command.index("--machine_rank") + 1] == "1"
    assert "--num_processes" not in command and "--main_process_port" not in command  # the file's
    assert command[-3:] == ["-m", "loraflow.training.worker", str(tmp_path)]
    fsdp = accelerate_command(Distributed(num_processes=8, strategy="fsdp"), tmp_path, port=1234)
    assert "--use_fsdp" in fsdp and fsdp[fsdp.index("--fsdp_use_orig_params") + 1] == "true"
    assert fsdp[fsdp.index("--main_process_port") + 1] == "1234"


def test_each_process_gets_its_share_of_a_global_batch() -> None:
    assert shard([5, 6, 7, 8], 0, 2) == ([5, 7], True)
    assert shard([5, 6, 7, 8], 1, 2) == ([6, 8], True)
    assert shard([5], 1, 2) == ([5], False)  # runs with weight 0, so collectives stay in step
