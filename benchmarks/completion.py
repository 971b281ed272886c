"""Benchmark: completion throughput, one-at-a-time ``generate`` against loraflow's engine.

Both serve the same base model with the same LoRA adapter, greedy, on the same prompts (32
support questions through the model's chat template, 64 new tokens at most). The baseline is
the usual recipe: a ``PeftModel`` and ``model.generate`` called for each prompt in turn. loraflow
serves the prompts as one batch through its engine (``Engine.stream``, the path behind
``Completion``). Printed: generated tokens/s of each, their ratio, how many answers agree, and
the engine's streaming time to first token (p50/p99 over the prompts of a batch).

    python benchmarks/completion.py [--model smollm2-135m-instruct] [--prompts 32] [--tokens 64]
                                    [--device auto|cpu|cuda]

On a GPU both run there (the engine takes the GPU when it has one); ``--device cuda`` without
one prints ``skipped:`` and why.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def prompts(n: int) -> list[str]:
    import polars as pl

    frame = pl.read_csv(ROOT / "src/loraflow/datasets/customer_support.csv", infer_schema=False)
    return list(frame["prompt"][:n])


def make_adapter(base_dir: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter (r=16 on every linear layer) with small random weights, saved to out."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(
        base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1e-3)  # a trained adapter is not zero; make it count
    model.save_pretrained(out)
    return out


def baseline(
    base_dir: Path, adapter: Path, texts: list[str], tokens: int, device: str = "cpu"
) -> tuple[float, list]:
    """One ``generate`` call per prompt on a PeftModel; returns (seconds, token id lists)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter).to(device).eval()
    encoded = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ).to(device)
        for t in texts
    ]
    with torch.inference_mode():
        model.generate(**encoded[0], max_new_tokens=4, do_sample=False)  # warm up
        outputs = []
        start = time.perf_counter()
        for ids in encoded:
            out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
            outputs.append(_until_eos(out[0, ids["input_ids"].shape[1] :].tolist(), tokenizer))
        seconds = time.perf_counter() - start
    return seconds, outputs


def _until_eos(ids: list[int], tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def engine_run(model: str, adapter: Path, texts: list[str], tokens: int) -> dict[str, Any]:
    """The prompts as one batch through loraflow's engine, streaming; timings and tokens."""
    from loraflow.engine import Request, Sampling, get_engine

    engine = get_engine(model)
    engine.add_adapter("bench", adapter)
    sampling = Sampling(max_new_tokens=tokens, temperature=0)
    requests = [Request(engine.encode(t), "bench", sampling) for t in texts]
    list(engine.stream(requests[:2]))  # warm up
    outputs: list[list[int]] = [[] for _ in texts]
    first: dict[int, float] = {}
    start = time.perf_counter()
    for event in engine.stream(requests):
        outputs[event.index].append(event.token_id)
        first.setdefault(event.index, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "outputs": outputs, "ttft": sorted(first.values())}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first looks (the engine too)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda, but torch sees no CUDA device")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"

    from loraflow.models import prepare, resolve_model

    torch.manual_seed(0)
    base_dir = prepare(resolve_model(args.model))
    texts = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(base_dir, Path(tmp) / "adapter")
        base_s, base_out = baseline(base_dir, adapter, texts, args.tokens, device)
        ours = engine_run(args.model, adapter, texts, args.tokens)
    base_tokens = sum(len(o) for o in base_out)
    our_tokens = sum(len(o) for o in ours["outputs"])
    agree = sum(a == b for a, b in zip(base_out, ours["outputs"], strict=True))
    base_rate, our_rate = base_tokens / base_s, our_tokens / ours["seconds"]
    print(
        f"model {args.model} + LoRA r=16 (all linear), {len(texts)} prompts, "
        f"{args.tokens} new tokens at most, greedy, {torch.get_num_threads()} threads"
    )
    print(
        f"baseline  one-at-a-time generate: {base_tokens} tokens in {base_s:.1f} s "
        f"= {base_rate:.1f} tokens/s"
    )
    print(
        f"loraflow  engine, one batch:      {our_tokens} tokens in {ours['seconds']:.1f} s "
        f"= {our_rate:.1f} tokens/s"
    )
    print(f"ratio {our_rate / base_rate:.2f}x (goal >= 5x); identical answers {agree}/{len(texts)}")
    ttft = ours["ttft"]
    print(
        f"loraflow streaming time to first token: p50 {percentile(ttft, 50) * 1000:.0f} ms, "
        f"p99 {percentile(ttft, 99) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
