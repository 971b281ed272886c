"""Data-parallel fine-tunes: the ``distributed`` section, and how the training loop shards.

A fine-tune with more than one process runs its training loop under ``accelerate launch``
(torchrun underneath: DDP, or FSDP with ``strategy: fsdp``); ``loraflow.training.launch``
starts it and relays what the main process reports. Each optimizer step takes one *global*
batch of ``batch_size x num_processes`` examples, split across the processes, and the loss is
weighted by label tokens over all of them: 2 processes with ``batch_size`` b/2 take the same
steps as 1 process with b.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraflow.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "accelerate"


class Distributed(BaseModel):
    """How many processes train one fine-tune, on how many machines, and how."""

    model_config = ConfigDict(extra="forbid")

    num_processes: int = Field(
        1, ge=1, le=4096, description="Training processes in all (one per GPU; on CPU, per core)."
    )
    num_machines: int = Field(1, ge=1, le=512, description="Machines the processes span.")
    machine_rank: int = Field(0, ge=0, description="This machine's rank (0 is the main one).")
    main_process_ip: str | None = Field(
        None, description="Address of machine 0, for runs on several machines."
    )
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="Port of machine 0's rendezvous; default: a free one."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a full copy per process; fsdp: weights sharded across them."
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the device has it (as with one process)."
    )
    config_file: Path | None = Field(
        None,
        description="An accelerate config file (configs/accelerate/*.yaml); the fields above "
        "override what it says.",
    )

    @model_validator(mode="after")
    def _check(self) -> Distributed:
        if self.config_file is None:  # else checked with the file's values (check_capacity)
            problem = inconsistency(self)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def per_machine(self) -> int:
        """Training processes on each machine."""
        return max(self.num_processes // self.num_machines, 1)

    @property
    def launched(self) -> bool:
        """Whether training runs under ``accelerate launch`` rather than in this process."""
        return self.num_processes > 1 or self.config_file is not None


def inconsistency(d: Distributed) -> str | None:
    """What does not add up between the counts of ``d``, if anything."""
    if d.num_processes < d.num_machines:
        return (
            f"num_processes ({d.num_processes}) counts every process on every machine; it "
            f"must be at least num_machines ({d.num_machines})"
        )
    if d.num_processes % d.num_machines:
        return (
            f"num_processes ({d.num_processes}) must split evenly over num_machines "
            f"({d.num_machines})"
        )
    if d.machine_rank >= d.num_machines:
        return f"machine_rank ({d.machine_rank}) must be below num_machines ({d.num_machines})"
    if d.num_machines > 1 and not d.main_process_ip:
        return "main_process_ip is required when num_machines is above 1"
    return None


def effective(d: Distributed) -> Distributed:
    """``d`` with what its accelerate config file says for the fields ``d`` leaves unset."""
    if d.config_file is None or not d.config_file.is_file():
        return d
    from loraflow.settings import read_yaml

    raw = read_yaml(d.config_file)
    names = ("num_processes", "num_machines", "machine_rank", "main_process_ip")
    update = {k: raw[k] for k in names if k in raw and k not in d.model_fields_set}
    if "strategy" not in d.model_fields_set and raw.get("distributed_type") == "FSDP":
        update["strategy"] = "fsdp"
    return d.model_copy(update=update)


def check_capacity(d: Distributed) -> None:
    """Refuse, before anything runs, more processes than this machine has devices for, FSDP
    without GPUs, and a config file that is not there; ConfigError names the field."""
    if d.config_file is not None and not d.config_file.is_file():
        raise ConfigError(
            f"distributed.config_file: {d.config_file} is not a file (loraflow ships "
            f"{', '.join(sorted(p.name for p in CONFIGS.glob('*.yaml')))} in configs/accelerate/)"
        )
    d = effective(d)
    problem = inconsistency(d)
    if problem:
        raise ConfigError(f"distributed (with {d.config_file}): {problem}")
    import torch

    if d.strategy == "fsdp" and not torch.cuda.is_available():
        raise ConfigError(
            "distributed.strategy: fsdp needs GPUs (accelerate's FSDP does not run on CPU "
            "processes); use ddp here, or run the fine-tune on a GPU work pool"
        )
    if torch.cuda.is_available():
        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = len(os.sched_getaffinity(0)), "CPU cores"
    if d.per_machine > have:
        raise ConfigError(
            f"distributed.num_processes: {d.per_machine} process(es) per machine, but this "
            f"machine has {have} {what}; lower num_processes (or raise num_machines)"
        )


def shard(batch: list[int], rank: int, world: int) -> tuple[list[int], bool]:
    """This process's part of one global batch, and whether it is real.

    A batch smaller than the world leaves some processes nothing; they run the first example
    with weight 0, so every process takes part in each collective step (DDP, FSDP need it).
    """
    mine = batch[rank::world]
    return (mine, True) if mine else (batch[:1], False)


def totals(accelerator: Any, *values: float) -> tuple[float, ...]:
    """Each of ``values`` summed over every process, in one collective (as is with one)."""
    if accelerator.num_processes == 1:
        return tuple(float(v) for v in values)
    import torch

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    summed = accelerator.reduce(tensor.to(accelerator.device), reduction="sum")
    return tuple(float(v) for v in summed.tolist())


def total(accelerator: Any, value: float) -> float:
    """``value`` summed over every process (as is with one)."""
    return totals(accelerator, value)[0]


def gathered_state(accelerator: Any, module: Any) -> dict[str, Any] | None:
    """Under FSDP, the peft model's full state dict gathered from every process (all must
    call it; only the main one gets it); otherwise None: each process holds all of it."""
    if not fsdp(accelerator):
        return None
    full = accelerator.get_state_dict(module)
    return {k.removeprefix("lm."): v for k, v in (full or {}).items()}


def fsdp(accelerator: Any) -> bool:
    return str(accelerator.distributed_type).endswith("FSDP")


def optimizer_state(accelerator: Any, module: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's whole state: under FSDP gathered from every process (all must call)."""
    if not fsdp(accelerator):
        return dict(optimizer.state_dict())
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    inner = getattr(optimizer, "optimizer", optimizer)
    return dict(
        FSDP.optim_state_dict(accelerator.unwrap_model(module, keep_fp32_wrapper=True), inner)
    )


def load_optimizer_state(accelerator: Any, module: Any, optimizer: Any, state: Any) -> None:
    """Load what ``optimizer_state`` saved (under FSDP, each process takes its shard)."""
    if not fsdp(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    inner = getattr(optimizer, "optimizer", optimizer)
    wrapped = accelerator.unwrap_model(module, keep_fp32_wrapper=True)
    inner.load_state_dict(FSDP.optim_state_dict_to_load(wrapped, inner, state))
