"""A fine-tune's training loop on several processes, under ``accelerate launch``.

The calling process (the Prefect task) keeps the MLflow run and the registry, as with one
process. It writes the plan to a scratch directory, starts ``accelerate launch -m
loraflow.training.worker <dir>`` in its own process group, and relays the main process's
events and metrics (``events.jsonl``) to its reporter; a cancel is a ``stop`` file the main
process reads between steps. The workers stop by themselves, with a checkpoint, when the
calling process is gone, so a killed job leaves no training behind and resumes from there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loraflow import pidfile
from loraflow.children import free_port, log_tail, stop_group
from loraflow.errors import LoraflowError
from loraflow.training.distributed import Distributed, effective
from loraflow.training.loop import Reporter, TrainingCancelled, TrainPlan, TrainResult

FSDP_FLAGS = {  # LoRA leaves most weights frozen: FSDP must keep the original parameters
    "--fsdp_use_orig_params": "true",
    "--fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "--fsdp_sharding_strategy": "FULL_SHARD",
    "--fsdp_state_dict_type": "FULL_STATE_DICT",
    "--fsdp_sync_module_states": "true",
}


def accelerate_command(d: Distributed, run_dir: Path, port: int) -> list[str]:
    """The ``accelerate launch`` command line of a fine-tune; with a config file, only the
    fields set in ``distributed`` override it."""
    given = d.model_fields_set if d.config_file is not None else set(Distributed.model_fields)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if d.config_file is not None:
        cmd += ["--config_file", str(d.config_file)]
    for name in ("num_processes", "num_machines", "machine_rank", "main_process_ip"):
        value = getattr(d, name)
        if name in given and value is not None:
            cmd += [f"--{name}", str(value)]
    if d.config_file is None or "main_process_port" in given:
        cmd += ["--main_process_port", str(d.main_process_port or port)]
    if "strategy" in given:
        if d.strategy == "fsdp":
            cmd += ["--use_fsdp", *(x for kv in FSDP_FLAGS.items() for x in kv)]
        else:
            cmd += ["--multi_gpu"]  # torchrun's launcher; on CPU the processes use gloo
    if d.config_file is None:
        cmd += ["--dynamo_backend", "no"]
    return [*cmd, "-m", "loraflow.training.worker", str(run_dir)]


def write_plan(plan: TrainPlan, run_dir: Path) -> None:
    """Everything a worker needs to rebuild ``plan``, under ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    plan.train.write_parquet(run_dir / "train.parquet")
    if plan.validation is not None:
        plan.validation.write_parquet(run_dir / "validation.parquet")
    described = {
        "model_dir": str(plan.model_dir),
        "spec": plan.spec.model_dump(mode="json"),
        "hyperparameters": plan.hyperparameters.model_dump(mode="json"),
        "store": plan.checkpoints.store.uri,
        "checkpoints": plan.checkpoints.prefix,
        "output_dir": str(plan.output_dir),
        "distributed": plan.distributed.model_dump(mode="json"),
    }
    (run_dir / "plan.json").write_text(json.dumps(described))


def run_launched(plan: TrainPlan, reporter: Reporter) -> TrainResult:
    """Train ``plan`` under ``accelerate launch``; what ``Trainer(plan, reporter).run()``
    returns or raises, with one process or many."""
    run_dir = plan.output_dir / "launch"
    write_plan(plan, run_dir)
    log_path = run_dir / "launch.log"
    parent = json.dumps(pidfile.identity(os.getpid()))  # workers stop when it is gone
    env = os.environ | {"LORAFLOW_TRAINING_PARENT": parent}
    env.setdefault("OMP_NUM_THREADS", str(_threads_per_process(plan.distributed)))
    command = accelerate_command(plan.distributed, run_dir, free_port())
    reporter.event(
        f"training on {plan.distributed.num_processes} processes "
        f"({plan.distributed.strategy}) under accelerate launch"
    )
    with log_path.open("ab") as sink:
        proc = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    offset = 0
    try:
        while True:
            done = proc.poll() is not None
            offset = _relay(run_dir / "events.jsonl", offset, reporter)
            if done:
                break
            if not (run_dir / "stop").exists() and reporter.should_stop():
                (run_dir / "stop").touch()
            time.sleep(0.5)
    finally:
        stop_group(proc)
    return _outcome(run_dir, proc.returncode, log_path)


def _outcome(run_dir: Path, code: int | None, log_path: Path) -> TrainResult:
    if (run_dir / "cancelled.json").exists():
        raise TrainingCancelled(json.loads((run_dir / "cancelled.json").read_text())["step"])
    if (run_dir / "error.json").exists():
        raise LoraflowError(json.loads((run_dir / "error.json").read_text())["message"])
    if code != 0 or not (run_dir / "result.json").exists():
        raise LoraflowError(
            f"training under accelerate launch failed (exit code {code}); a re-run resumes "
            f"from its last checkpoint. The end of {log_path}:\n{log_tail(log_path)}"
        )
    done = json.loads((run_dir / "result.json").read_text())
    return TrainResult(**(done | {"adapter_dir": Path(done["adapter_dir"])}))


def _relay(path: Path, offset: int, reporter: Reporter) -> int:
    """Pass on each complete line of ``path`` after ``offset``; the new offset."""
    if not path.exists():
        return offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        item = json.loads(line)
        if "begin" in item:
            reporter.begin(item["begin"])
        elif "metrics" in item:
            reporter.metrics(item["step"], item["metrics"])
        else:
            reporter.event(item["event"], item.get("level", "info"))
    return offset + end


def _threads_per_process(d: Distributed) -> int:
    return max(len(os.sched_getaffinity(0)) // effective(d).per_machine, 1)


def result_dict(result: TrainResult) -> dict[str, Any]:
    """``result`` as the worker writes it for the calling process."""
    return {
        "adapter_dir": str(result.adapter_dir),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "stats": result.stats,
        "history": result.history,
    }
