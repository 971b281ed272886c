"""Benchmark: LoRA fine-tuning throughput, loraflow's trainer against Hugging Face's Trainer.

Both train the same base model with the same LoRA config, hyperparameters, precision and data
(lognormal prompt/response lengths, as real support or instruction data has). The baseline is
the plain recipe: ``transformers.Trainer`` + peft, random order, padded to the batch maximum.
Each run is its own subprocess (for a clean peak RSS) and the two alternate within this one
benchmark run. Printed: real (non-pad) tokens/s of each over the training loop, their ratio,
the CPU seconds (user and system) each spent a token, the validation loss of each after
training (computed the same way), peak RSS, and loraflow's model FLOPs utilisation (4N +
6N_lora FLOPs a token against the best large-matmul FLOP/s measured in the same process just
before and after its run) twice: over the one-epoch run, and in steady state, over the second
epoch of a further two-epoch loraflow run. The first epoch includes the first touch of the
activation memory, which costs the most on a virtual machine whose host backs guest memory
lazily (measured on this project's machine: about 2.7 s of system CPU time a GB, against
0.08 s once touched).

``--device cuda`` runs the same comparison on a GPU (both trainers in bf16; loraflow with its
GPU levers: packed batches, Liger kernels when installed, torch.compile) and measures the
GPU's bf16 matmul peak for the MFU; without a CUDA device it prints ``skipped:`` and why.

    python benchmarks/finetune.py [--model smollm2-135m-instruct] [--rows 96] [--repeat 1]
                                  [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    "order",
    "account",
    "refund",
    "shipping",
    "delivery",
    "password",
    "card",
    "payment",
    "invoice",
    "address",
    "email",
    "change",
    "cancel",
    "update",
    "reset",
    "track",
    "return",
    "item",
    "store",
    "app",
    "settings",
    "help",
    "please",
    "thanks",
    "when",
    "where",
    "how",
    "what",
    "why",
    "can",
    "could",
    "would",
    "should",
    "my",
    "your",
    "the",
    "a",
    "an",
    "to",
    "of",
    "in",
    "on",
    "for",
    "with",
    "from",
    "is",
]
HYPER = {"lr": 2e-4, "epochs": 1, "batch_size": 8, "warmup_ratio": 0.03, "weight_decay": 0.001}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}


def make_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Prompt/response pairs whose word counts are lognormal (median 25 and 35, long tails)."""
    rng = random.Random(seed)

    def text(median: float) -> str:
        words = min(400, max(3, int(rng.lognormvariate(math.log(median), 0.9))))
        return " ".join(rng.choices(WORDS, k=words)).capitalize() + "."

    return [(text(25), text(35)) for _ in range(n)]


def frames(rows: int) -> tuple[Any, Any]:
    import polars as pl

    def frame(pairs: list[tuple[str, str]]) -> Any:
        return pl.DataFrame({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})

    return frame(make_rows(rows, 1)), frame(make_rows(max(8, rows // 8), 2))


def setup(model: str) -> tuple[Any, Path, Any]:
    from loraflow.models import prepare, resolve_model

    spec = resolve_model(model)
    return spec, prepare(spec), None


def encoded(spec: Any, path: Path, frame: Any) -> list[Any]:
    from transformers import AutoTokenizer

    from loraflow.training.data import encode

    tokenizer = AutoTokenizer.from_pretrained(path)
    examples, _ = encode(frame, tokenizer, spec.chat_template, spec.max_length)
    return examples


def eval_loss(lm: Any, examples: list[Any], pad_id: int, mixed: str) -> float:
    """Token-weighted loss on the response tokens, the same function for both trainers (under
    the autocast both trained in)."""
    import torch

    from loraflow.training.data import collate
    from loraflow.training.model import ResponseLoss

    loss_fn = ResponseLoss(lm).eval()
    total, count = 0.0, 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=mixed == "bf16")
    with torch.no_grad(), autocast:
        for start in range(0, len(examples), 8):
            b = collate(examples, list(range(start, min(start + 8, len(examples)))), pad_id)
            loss, n = loss_fn(*(t.to(device) for t in (b.input_ids, b.attention_mask, b.labels)))
            total, count = total + float(loss), count + int(n)
    return total / count


class Timer:
    """Reporter (loraflow) / callback (HF) timing the loop from its first step to its last, in
    wall-clock seconds and in the process's user and system CPU seconds (a run slowed by the
    kernel - page faults on first touch - shows in its system time)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.cpu_start = self.cpu_end = (0.0, 0.0)
        self.losses: list[float] = []
        self.step_ends: list[float] = []  # seconds from the start to the end of each step

    def begin(self, total_steps: int) -> None:
        self.start, self.cpu_start = time.perf_counter(), cpu_seconds()

    def stop(self) -> None:
        self.end, self.cpu_end = time.perf_counter(), cpu_seconds()

    def cpu(self) -> dict[str, float]:
        """User and system CPU seconds of the timed loop."""
        (user0, system0), (user1, system1) = self.cpu_start, self.cpu_end
        return {"user_seconds": user1 - user0, "system_seconds": system1 - system0}

    def event(self, message: str, level: str = "info") -> None:
        pass

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.stop()
        self.losses.append(values["loss"])
        self.step_ends.append(self.end - self.start)

    def should_stop(self) -> bool:
        return False


def cpu_seconds() -> tuple[float, float]:
    """This process's user and system CPU seconds so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def child_loraflow(model: str, rows: int, epochs: int) -> dict[str, Any]:
    import torch

    from loraflow.storage.local import LocalStore
    from loraflow.training.checkpoints import CheckpointStore
    from loraflow.training.hyperparameters import parse_hyperparameters
    from loraflow.training.loop import Trainer, TrainPlan
    from loraflow.training.model import device_dtype

    spec, path, _ = setup(model)
    train, val = frames(rows)
    hp = parse_hyperparameters(
        {**HYPER, "epochs": epochs, "peft_config": LORA, "save_every": 10_000}
    )
    mixed, device = device_dtype(spec)[1], "cuda" if torch.cuda.is_available() else "cpu"
    peaks = [matmul_peak(mixed, device)]  # MFU's ceiling, in this process, around the run
    with tempfile.TemporaryDirectory() as tmp:
        plan = TrainPlan(
            path, spec, hp, train, None, CheckpointStore(LocalStore(Path(tmp)), "c"), Path(tmp)
        )
        timer = Timer()
        trainer = Trainer(plan, timer)
        trainer.run()
        lm = trainer._unwrapped()
    peaks.append(matmul_peak(mixed, device))
    epoch_tokens = sum(len(e.input_ids) for e in trainer.train_examples)
    val_examples = encoded(spec, path, val)
    per_epoch = trainer.steps_per_epoch
    return {
        "seconds": timer.end - timer.start,
        "tokens": epoch_tokens * hp.epochs,
        # the last epoch alone: after the first, the process's memory is all touched already
        "last_epoch_seconds": timer.step_ends[-1] - timer.step_ends[-per_epoch - 1]
        if hp.epochs > 1
        else None,
        "epoch_tokens": epoch_tokens,
        "eval_loss": eval_loss(
            lm, val_examples, trainer.pad_id, trainer.accelerator.mixed_precision
        ),
        "precision": str(trainer.accelerator.mixed_precision),
        "lora_params": sum(p.numel() for p in lm.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in lm.parameters() if not p.requires_grad),
        "peak_flops": max(peaks),  # the higher: the lower MFU
        **timer.cpu(),
    }


def child_hf(model: str, rows: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from loraflow.training.model import device_dtype

    spec, path, _ = setup(model)
    train, val = frames(rows)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = encoded(spec, path, train)
    data = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    dtype, mixed = device_dtype(spec)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    lm = get_peft_model(
        base, LoraConfig(task_type="CAUSAL_LM", target_modules=spec.target_modules, **LORA)
    )
    timer = Timer()

    class Timing(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            timer.begin(0)

        def on_train_end(self, *a: Any, **k: Any) -> None:
            timer.stop()

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=HYPER["batch_size"],
            num_train_epochs=HYPER["epochs"],
            learning_rate=HYPER["lr"],
            lr_scheduler_type="cosine",
            warmup_steps=HYPER["warmup_ratio"],  # a float below 1 is a ratio in transformers 5
            weight_decay=HYPER["weight_decay"],
            max_grad_norm=1.0,
            bf16=mixed == "bf16",
            use_cpu=not torch.cuda.is_available(),
            save_strategy="no",
            logging_steps=1,
            report_to=[],
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=lm,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
            callbacks=[Timing()],
        )
        trainer.train()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "seconds": timer.end - timer.start,
        "tokens": sum(len(e.input_ids) for e in examples) * HYPER["epochs"],
        "eval_loss": eval_loss(lm, encoded(spec, path, val), pad, mixed),
        "precision": mixed,
        **timer.cpu(),
    }


def padding_share(model: str, rows: int) -> float:
    """Share of token slots that are padding when random batches are padded to their maximum."""
    spec, path, _ = setup(model)
    lengths = [len(e.input_ids) for e in encoded(spec, path, frames(rows)[0])]
    random.Random(0).shuffle(lengths)
    size = HYPER["batch_size"]
    batches = [lengths[i : i + size] for i in range(0, len(lengths), size)]
    return 1 - sum(lengths) / sum(max(b) * len(b) for b in batches)


def cpu_name() -> str:
    """The CPU's model, cores, the vector ISA torch uses and whether it has native bf16: the
    figures (and the precision both trainers run in) depend on them."""
    import platform

    import torch

    model = platform.processor() or "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    bf16 = "native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
    return f"{model}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, {bf16}"


def matmul_peak(mixed: str, device: str) -> float:
    """Best FLOP/s of a large matmul in the training precision: the ceiling MFU is against."""
    import torch

    n, best = (8192, 0.0) if device == "cuda" else (2048, 0.0)
    # operands already in the matmul dtype: under autocast from fp32 the two casts would be
    # timed too, and a lower peak flatters the MFU (by about 10 % on this CPU)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(8):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def run_child(
    kind: str, model: str, rows: int, device: str, epochs: int = HYPER["epochs"]
) -> dict[str, Any]:
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}
    args = ["--child", kind, "--model", model, "--rows", str(rows), "--epochs", str(epochs)]
    out = subprocess.run(
        [sys.executable, __file__, *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--child", choices=["loraflow", "hf"])
    parser.add_argument("--epochs", type=int, default=HYPER["epochs"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        result = (
            child_loraflow(args.model, args.rows, args.epochs)
            if args.child == "loraflow"
            else child_hf(args.model, args.rows)
        )
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if torch.cuda.is_available():
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(result))
        return

    import torch

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("skipped: --device cuda, but torch sees no CUDA device")
        return
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    print(f"model {args.model}, {args.rows} rows, {HYPER}, LoRA {LORA}")
    print(f"device: {name}")
    results: dict[str, list[dict[str, Any]]] = {"hf": [], "loraflow": [], "steady": []}
    for i in range(args.repeat):
        for kind in ("hf", "loraflow"):
            r = run_child(kind, args.model, args.rows, device)
            results[kind].append(r)
            print(
                f"  run {i + 1} {kind:8}: {r['tokens'] / r['seconds']:7.1f} real tokens/s, "
                f"{r['seconds']:6.1f} s (CPU: user {r['user_seconds']:.0f} s, system "
                f"{r['system_seconds']:.1f} s), eval loss {r['eval_loss']:.4f}, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB"
                + (f", peak GPU memory {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else "")
            )
        # steady state: loraflow trains two epochs; the second is timed on its own
        r = run_child("loraflow", args.model, args.rows, device, epochs=2)
        results["steady"].append(r)
        print(
            f"  run {i + 1} loraflow, second of two epochs: "
            f"{r['epoch_tokens'] / r['last_epoch_seconds']:7.1f} real tokens/s, "
            f"{r['last_epoch_seconds']:6.1f} s"
        )
    speed = {
        k: statistics.median(r["tokens"] / r["seconds"] for r in v) for k, v in results.items()
    }
    ours, theirs = results["loraflow"][-1], results["hf"][-1]
    flops_per_token = 4 * ours["params"] + 6 * ours["lora_params"]
    # both children train in the precision their device gives (loraflow.training.model)
    precisions = {r["precision"] for v in results.values() for r in v}
    if len(precisions) != 1:
        sys.exit(f"the two trainers ran in different precisions: {sorted(precisions)}")
    mixed = precisions.pop()
    print(f"precision: {mixed}")
    print(
        f"baseline (HF Trainer + peft, padded): {speed['hf']:.1f} real tokens/s "
        f"(padding is {padding_share(args.model, args.rows):.0%} of its token slots)"
    )
    print(f"loraflow trainer:                     {speed['loraflow']:.1f} real tokens/s")
    print(f"ratio: loraflow is {speed['loraflow'] / speed['hf']:.2f}x the baseline (goal >= 3x)")

    def cpu(kind: str) -> float:  # median user + system CPU seconds a real token
        return statistics.median(
            (r["user_seconds"] + r["system_seconds"]) / r["tokens"] for r in results[kind]
        )

    print(
        f"CPU seconds a token (user + system, median): loraflow {cpu('loraflow') * 1e3:.1f} ms, "
        f"baseline {cpu('hf') * 1e3:.1f} ms; loraflow uses {cpu('loraflow') / cpu('hf'):.2f}x "
        "the baseline's (the baseline's include the kernel's page faults for the padded "
        "activations it allocates every step)"
    )
    gap = abs(ours["eval_loss"] - theirs["eval_loss"]) / theirs["eval_loss"]
    print(
        f"final eval loss: baseline {theirs['eval_loss']:.4f}, loraflow {ours['eval_loss']:.4f}; "
        f"difference {gap:.2%} (goal <= 1 %)"
    )
    memory = "peak_gpu_mb" if device == "cuda" else "peak_rss_mb"
    print(
        f"{'peak GPU memory' if device == 'cuda' else 'peak RSS'}: baseline "
        f"{theirs[memory]:.0f} MB, loraflow {ours[memory]:.0f} MB; "
        f"ratio {ours[memory] / theirs[memory]:.2f}x (goal <= 0.75x)"
    )

    # each run against the matmul peak measured in its own process just before and after it
    # (the higher of the two), so a machine that slows down or speeds up between runs moves both
    def mfu(r: dict[str, Any], tokens: str, seconds: str) -> float:
        return r[tokens] / r[seconds] * flops_per_token / r["peak_flops"]

    runs, steady = results["loraflow"], results["steady"]
    mfus = [mfu(r, "tokens", "seconds") for r in runs]
    steady_mfus = [mfu(r, "epoch_tokens", "last_epoch_seconds") for r in steady]
    peaks = [r["peak_flops"] / 1e9 for r in runs + steady]
    print(
        f"loraflow MFU over the run: {statistics.median(mfus):.1%} of the measured matmul peak "
        f"(goal >= 40 %); {flops_per_token / 1e6:.0f} MFLOP a token, peak "
        f"{min(peaks):.0f}-{max(peaks):.0f} GFLOP/s (each run against its own)"
    )
    print(
        f"loraflow MFU in steady state: {statistics.median(steady_mfus):.1%} (goal >= 40 %): the "
        "second epoch of a two-epoch run, once its memory has been touched (the first epoch "
        "includes the first touch of its activation memory)"
    )


if __name__ == "__main__":
    main()
