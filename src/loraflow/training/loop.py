"""The LoRA training loop on accelerate: response-only loss, checkpoints, resume, cancellation.

One process on CPU or one GPU as is; several processes (GPUs, nodes, or CPU cores with gloo)
under ``accelerate launch`` (``loraflow.training.launch``): each step's global batch is split
across them (``loraflow.training.distributed``), they agree on a cancel, and only the main
process reports and writes checkpoints and the adapter.
"""

from __future__ import annotations

import io
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import torch

from loraflow.errors import LoraflowError
from loraflow.models.zoo import ModelSpec
from loraflow.settings import get_settings
from loraflow.training import speed
from loraflow.training.checkpoints import CheckpointStore
from loraflow.training.data import Batch, Example, collate, encode, epoch_batches, pack
from loraflow.training.distributed import (
    Distributed,
    fsdp,
    gathered_state,
    load_optimizer_state,
    optimizer_state,
    shard,
    total,
    totals,
)
from loraflow.training.hyperparameters import Hyperparameters
from loraflow.training.model import ResponseLoss, accelerator_for, build, device_dtype
from loraflow.training.speed import split_by_tokens
from loraflow.training_settings import TrainingConfig


class TrainingCancelled(LoraflowError):
    """Training stopped on request after saving a checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step
        super().__init__(f"fine-tune cancelled at step {step}; checkpoint saved")


class Reporter(Protocol):
    """Where the loop sends what it does; the flow layer fans this out to Prefect and MLflow."""

    def begin(self, total_steps: int) -> None: ...
    def event(self, message: str, level: str = "info") -> None: ...
    def metrics(self, step: int, values: dict[str, float]) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass
class TrainPlan:
    """Everything one fine-tune needs, resolved: local base model, data, settings, outputs."""

    model_dir: Path
    spec: ModelSpec
    hyperparameters: Hyperparameters
    train: pl.DataFrame
    validation: pl.DataFrame | None
    checkpoints: CheckpointStore
    output_dir: Path
    distributed: Distributed = field(default_factory=Distributed)
    training: TrainingConfig | None = None  # how to run it; None: the settings' ``training``


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    resumed_from: int | None
    train_loss: float | None
    eval_loss: float | None
    stats: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Runs one fine-tune described by a TrainPlan. Use ``run()``."""

    def __init__(self, plan: TrainPlan, reporter: Reporter) -> None:
        self.plan = plan
        self.hp = plan.hyperparameters
        self.reporter = reporter
        # the latest losses; checkpoints keep them, so a job resumed at its end reports them
        self.losses: dict[str, float | None] = {"train_loss": None, "eval_loss": None}

    # -- setup ---------------------------------------------------------------------------
    def _setup(self) -> None:
        from accelerate import Accelerator
        from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

        plan, hp = self.plan, self.hp
        dtype, mixed = device_dtype(plan.spec)
        if plan.distributed.mixed_precision != "auto":
            mixed = plan.distributed.mixed_precision
        self.accelerator = accelerator_for(Accelerator, mixed)
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.tokenizer = AutoTokenizer.from_pretrained(plan.model_dir)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        use_chat = plan.spec.formats_chat(self.tokenizer)
        max_length = hp.max_length or plan.spec.max_length
        self.train_examples, self.train_stats = encode(
            plan.train, self.tokenizer, use_chat, max_length
        )
        self.val_examples: list[Example] = []
        if plan.validation is not None:
            self.val_examples, _ = encode(plan.validation, self.tokenizer, use_chat, max_length)
        if not self.train_examples:
            raise LoraflowError("no training example has response tokens left after truncation")
        torch.manual_seed(hp.seed)
        lora = {"target_modules": plan.spec.target_modules, **hp.lora()}
        config = plan.training or get_settings().training
        self.model, self.levers = build(plan.model_dir, dtype, lora, mixed, config)
        if config.reuse_memory and self.accelerator.device.type == "cpu":
            self.levers.reused_memory = speed.reuse_memory()
            if not self.levers.reused_memory:
                self.levers.skipped.append("reused memory (the C library is not glibc)")
        if fsdp(self.accelerator):  # every process must run as many micro-batches
            self.levers.max_batch_tokens, self.levers.packed = None, False
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        batches_per_epoch = math.ceil(len(self.train_examples) / (hp.batch_size * self.world))
        self.steps_per_epoch = math.ceil(batches_per_epoch / hp.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * hp.epochs
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(hp.warmup_ratio * self.total_steps), self.total_steps
        )
        self.loss_module, self.optimizer = self.accelerator.prepare(
            ResponseLoss(self.model, self.levers.loss, self.levers.causal_only), self.optimizer
        )
        self.params = params

    # -- checkpoints ---------------------------------------------------------------------
    def _save(self, step: int) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save as save_tensors

        gathered = gathered_state(self.accelerator, self.loss_module)
        optimizer = optimizer_state(self.accelerator, self.loss_module, self.optimizer)
        if not self.main:
            return
        adapter = {
            k: v.contiguous()
            for k, v in get_peft_model_state_dict(self._unwrapped(), gathered).items()
        }
        state = io.BytesIO()
        torch.save(
            {
                "step": step,
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "losses": self.losses,
            },
            state,
        )
        folder = self.plan.checkpoints.save(
            step, {"adapter.safetensors": save_tensors(adapter), "state.pt": state.getvalue()}
        )
        self.reporter.event(f"checkpoint saved at step {step} ({folder})")

    def _resume(self) -> int:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load as load_tensors

        found = self.plan.checkpoints.latest()
        if found is None:
            return 0
        set_peft_model_state_dict(
            self._unwrapped(), load_tensors(found.files["adapter.safetensors"])
        )
        state = torch.load(io.BytesIO(found.files["state.pt"]), weights_only=False)
        load_optimizer_state(self.accelerator, self.loss_module, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.losses = state.get("losses", self.losses)
        self.reporter.event(f"resumed from the checkpoint at step {found.step}")
        return int(found.step)

    def _loss(self, batch: Batch, device: Any) -> tuple[Any, Any]:
        def on(t: Any) -> Any:
            return None if t is None else t.to(device)

        return self.loss_module(
            on(batch.input_ids), on(batch.attention_mask), on(batch.labels), on(batch.position_ids)
        )

    def _micro_batches(self, indices: list[int]) -> list[Batch]:
        """One batch's examples as micro-batches within the token budget, packed or padded."""
        lengths = [len(self.train_examples[i].input_ids) for i in indices]
        parts = split_by_tokens(lengths, self.levers.max_batch_tokens)
        make = pack if self.levers.packed else lambda ex, idx: collate(ex, idx, self.pad_id)
        return [make(self.train_examples, [indices[k] for k in part]) for part in parts]

    def _unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.loss_module).lm

    # -- loop ----------------------------------------------------------------------------
    def _step_groups(self, epoch: int) -> list[list[tuple[list[int], bool]]]:
        """This process's micro-batches, grouped by optimizer step: its share of each global
        batch of ``batch_size x processes`` examples."""
        acc = self.hp.gradient_accumulation_steps
        size = self.hp.batch_size * self.world
        batches = epoch_batches(self.train_examples, size, self.hp.seed, epoch)
        mine = [shard(b, self.rank, self.world) for b in batches]
        return [mine[i : i + acc] for i in range(0, len(mine), acc)]

    def _train_step(self, group: list[tuple[list[int], bool]]) -> dict[str, float]:
        device = self.accelerator.device
        batches = [(b, real) for idx, real in group for b in self._micro_batches(idx)]
        # every process divides by the label tokens of all of them; DDP averages gradients over
        # processes, so each scales by their number: the step is that of one big batch
        label_total = total(self.accelerator, sum(b.label_tokens for b, real in batches if real))
        loss_sum = 0.0
        self.loss_module.train()
        for k, (b, real) in enumerate(batches):
            last = k == len(batches) - 1
            with nullcontext() if last else self.accelerator.no_sync(self.loss_module):
                summed, _ = self._loss(b, device)
                weight = self.world / label_total if real else 0.0
                self.accelerator.backward(summed * weight)
            loss_sum += float(summed.detach()) if real else 0.0
        grad_norm = self.accelerator.clip_grad_norm_(self.params, self.hp.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens, slots = totals(
            self.accelerator,
            loss_sum,
            sum(b.real_tokens for b, r in batches if r),
            sum(b.slots for b, r in batches if r),
        )
        return {
            "loss": loss_sum / label_total,
            "learning_rate": lr,
            "grad_norm": float(torch.as_tensor(grad_norm)),
            "tokens": tokens,
            "pad_fraction": 1 - tokens / slots,
        }

    def evaluate(self) -> float | None:
        """Token-weighted loss over the validation examples."""
        if not self.val_examples:
            return None
        self.loss_module.eval()
        summed, count = 0.0, 0
        device = self.accelerator.device
        order = sorted(
            range(len(self.val_examples)), key=lambda i: len(self.val_examples[i].input_ids)
        )
        size = self.hp.batch_size * self.world  # every process runs as many batches (FSDP)
        with torch.no_grad():
            for start in range(0, len(order), size):
                mine, real = shard(order[start : start + size], self.rank, self.world)
                loss, n = self._loss(collate(self.val_examples, mine, self.pad_id), device)
                if real:
                    summed += float(loss)
                    count += int(n)
        loss, tokens = totals(self.accelerator, summed, count)
        return loss / max(tokens, 1)

    def run(self) -> TrainResult:
        """Train to the end (or to a cancel), checkpointing on the way; returns the adapter."""
        try:
            return self._run()
        finally:
            if getattr(self, "levers", None) and self.levers.reused_memory:
                speed.release_memory()

    def _run(self) -> TrainResult:
        self._setup()
        hp, rep = self.hp, self.reporter
        stats = vars(self.train_stats) | {
            "validation_rows": len(self.val_examples),
            "steps": self.total_steps,
        }
        rep.event(f"training on {stats}")
        rep.event(str(self.levers))
        rep.begin(self.total_steps)
        if self.train_stats.truncated:
            rep.event(
                f"{self.train_stats.truncated} example(s) truncated to the maximum length",
                "warning",
            )
        start_step = self._resume()
        step, history = start_step, []
        eval_every = hp.eval_every or self.steps_per_epoch
        save_every = hp.save_every or self.steps_per_epoch
        for epoch in range(hp.epochs):
            for n, group in enumerate(self._step_groups(epoch)):
                if epoch * self.steps_per_epoch + n < start_step:
                    continue  # done before the resume
                began = time.perf_counter()
                values = self._train_step(group)
                step += 1
                seconds = time.perf_counter() - began
                values["tokens_per_second"] = values.pop("tokens") / seconds
                values["epoch"] = round(step / self.steps_per_epoch, 4)
                self.losses["train_loss"] = values["loss"]
                if step % eval_every == 0 or step == self.total_steps:
                    eval_loss = self.evaluate()
                    if eval_loss is not None:
                        values["eval_loss"] = self.losses["eval_loss"] = eval_loss
                history.append({"step": step, **values})
                rep.metrics(step, values)
                if step % save_every == 0 or step == self.total_steps:
                    self._save(step)
                if self._stop_agreed() and step < self.total_steps:
                    if step % save_every:
                        self._save(step)
                    raise TrainingCancelled(step)
        return self._finish(step, start_step, history, stats)

    def _stop_agreed(self) -> bool:
        """Whether to cancel now: the main process asks its reporter, and every process
        learns the answer at the same step."""
        return total(self.accelerator, float(self.main and self.reporter.should_stop())) > 0

    def _finish(
        self,
        step: int,
        start: int,
        history: list[dict[str, float]],
        stats: dict[str, Any],
    ) -> TrainResult:
        adapter_dir = self.plan.output_dir / "adapter"
        gathered = gathered_state(self.accelerator, self.loss_module)
        if self.main:
            self._unwrapped().save_pretrained(adapter_dir, state_dict=gathered)
            self.tokenizer.save_pretrained(adapter_dir)
        self.accelerator.wait_for_everyone()
        return TrainResult(
            adapter_dir=adapter_dir,
            steps=step,
            resumed_from=start or None,
            train_loss=self.losses["train_loss"],
            eval_loss=self.losses["eval_loss"],
            stats=stats,
            history=history,
        )
