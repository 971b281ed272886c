"""Benchmark: the same work on 1 and 2 processes, as loraflow distributes it on this machine.

1. Fine-tuning: one process with per-process batch b against ``accelerate launch`` with 2
   processes (gloo on CPU) of b/2 each: the same steps. Printed: tokens/s of each (median of
   the steps' own figures, the first step left out), their ratio, and the final train and
   eval losses of each (they should agree within 1 %).
2. Batch completion: the ``batch-complete`` flow on a local Dask cluster of 1 worker and of 2,
   beside the in-process loop with no cluster. Printed: seconds and prompts/s of each, the
   ratio of 2 workers to 1, and whether the outputs are identical.

On 2 cores expect little gain from a second process: each process gets one core instead of
two. The point here is that the same code runs and matches; the gain comes with more devices.

    python benchmarks/distributed.py [--model smollm2-135m-instruct] [--rows 48] [--prompts 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on the path, and its name would hide Dask's
# ``distributed`` package: import from the project root instead
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks.finetune import frames  # noqa: E402  (the same synthetic data)


class Steps:
    """A reporter that keeps each step's metrics."""

    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def begin(self, total_steps: int) -> None:
        pass

    def event(self, message: str, level: str = "info") -> None:
        pass

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.values.append(values)

    def should_stop(self) -> bool:
        return False


def fine_tune(model: str, rows: int, processes: int, batch: int) -> dict[str, Any]:
    from loraflow.models import prepare, resolve_model
    from loraflow.storage.local import LocalStore
    from loraflow.training.checkpoints import CheckpointStore
    from loraflow.training.distributed import Distributed
    from loraflow.training.hyperparameters import parse_hyperparameters
    from loraflow.training.launch import run_launched
    from loraflow.training.loop import Trainer, TrainPlan

    spec = resolve_model(model)
    path = prepare(spec)
    train, val = frames(rows)
    hyper: dict[str, Any] = {"epochs": 1, "batch_size": batch // processes, "lr": 2e-3}
    if processes > 1:
        hyper["distributed"] = {"num_processes": processes}
    hp = parse_hyperparameters({**hyper, "save_every": 10_000})
    steps = Steps()
    with tempfile.TemporaryDirectory() as tmp:
        plan = TrainPlan(
            path, spec, hp, train, val, CheckpointStore(LocalStore(Path(tmp)), "c"),
            Path(tmp) / "out", hp.distributed or Distributed(),
        )  # fmt: skip
        began = time.perf_counter()
        result = run_launched(plan, steps) if processes > 1 else Trainer(plan, steps).run()
        wall = time.perf_counter() - began
    speeds = [v["tokens_per_second"] for v in steps.values[1:]] or [0.0]
    return {
        "tokens_per_second": statistics.median(speeds),
        "wall": wall,
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "steps": result.steps,
    }


def batch_jobs(model: str, prompts: int, max_new_tokens: int) -> list[tuple[str, float, bytes]]:
    """(label, seconds, output) of the in-process loop, and the flow on 1 and 2 workers."""
    import json

    from prefect.testing.utilities import prefect_test_harness

    from flows.batch_complete import batch_complete
    from loraflow import batch
    from loraflow.batch import BatchCompleteConfig
    from loraflow.storage import get_store

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "prompts.jsonl"
        source.write_text(
            "".join(json.dumps({"prompt": f"Where is order {i}? It was due."}) + "\n"
                    for i in range(prompts))
        )  # fmt: skip
        config = BatchCompleteConfig(
            model=model, input_data_path=str(source), max_new_tokens=max_new_tokens,
            temperature=0, batch_size=8, chunk_size=8,
        )  # fmt: skip
        out = []
        began = time.perf_counter()
        alone = batch.run(config, batch.JOB_IDS.new())
        out.append(("in process, no cluster", time.perf_counter() - began, alone.job_id))
        with prefect_test_harness(server_startup_timeout=120):
            for workers in (1, 2):
                began = time.perf_counter()
                done = batch_complete(config.model_copy(update={"workers": workers}))
                label = (
                    f"flow, {workers} local workers" if workers > 1 else "flow, in its own process"
                )
                out.append((label, time.perf_counter() - began, done.job_id))
        store = get_store()
        return [
            (label, seconds, store.get_bytes(f"batch-completions/{job}/results.jsonl"))
            for label, seconds, job in out
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8, help="global batch of the fine-tune")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--skip", choices=["fine-tune", "batch"])
    args = parser.parse_args()

    if args.skip != "fine-tune":
        print(f"fine-tune of {args.model}, {args.rows} rows, global batch {args.batch}, 1 epoch")
        one = fine_tune(args.model, args.rows, 1, args.batch)
        two = fine_tune(args.model, args.rows, 2, args.batch)
        for label, r in (("1 process", one), ("2 processes (DDP, gloo)", two)):
            print(
                f"  {label:<26} {r['tokens_per_second']:8.0f} tokens/s  wall {r['wall']:6.1f} s"
                f"  steps {r['steps']}  train loss {r['train_loss']:.4f}"
                f"  eval loss {r['eval_loss']:.4f}"
            )
        print(
            f"  ratio 2 processes / 1: {two['tokens_per_second'] / one['tokens_per_second']:.2f}x"
        )
        drift = abs(two["eval_loss"] - one["eval_loss"]) / one["eval_loss"]
        print(f"  eval loss difference: {100 * drift:.2f} % (goal < 1 %)")

    if args.skip != "batch":
        print(f"batch completion with {args.model}: {args.prompts} prompts, "
              f"{args.max_new_tokens} new tokens each")  # fmt: skip
        runs = batch_jobs(args.model, args.prompts, args.max_new_tokens)
        for label, seconds, _ in runs:
            print(f"  {label:<26} {seconds:7.1f} s  {args.prompts / seconds:6.2f} prompts/s")
        print(f"  ratio 2 local workers / the flow in its process: {runs[1][1] / runs[2][1]:.2f}x")
        same = all(output == runs[0][2] for _, _, output in runs)
        print(f"  outputs identical: {same}")


if __name__ == "__main__":
    main()
