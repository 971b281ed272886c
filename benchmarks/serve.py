"""Benchmark: the HTTP service under 1 and under 16 concurrent streaming clients.

A ``loraflow serve`` subprocess serves SmolLM2-135M; clients here stream LLM Engine
completions (greedy, 64 new tokens at most) over HTTP. Printed: aggregate generated tokens/s
with 1 client and with 16, their ratio (goal >= 5x), time to first token p50/p99 under 16, and
the server's overhead against the same load on the engine in this process, without HTTP
(16 threads submitting to the engine's scheduler; goal <= 10 %). Because the clients share
the machine's cores with the server, the overhead is also counted in CPU time: the server
process's own CPU seconds per generated token under the 16 clients, against this process's
CPU seconds per token for the same requests on the engine in process (goal <= 1.10).

With ``--backend vllm`` the same load runs on both serving backends in one run, one server
after the other: loraflow's engine, then vLLM (a server ``loraflow serve`` starts from
.venv-vllm), and prints the ratio vLLM / engine.

    python benchmarks/serve.py [--model smollm2-135m-instruct] [--clients 16] [--rounds 2]
                               [--backend engine|vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
KEY = "bench-key"


def prompts(n: int) -> list[str]:
    import polars as pl

    frame = pl.read_csv(ROOT / "src/loraflow/datasets/customer_support.csv", infer_schema=False)
    return list(frame["prompt"][:n])


def start_server(port: int, home: str, backend: str = "engine") -> subprocess.Popen:
    """``loraflow serve`` on ``backend`` with its own home (benchmarks/load.py starts it)."""
    from load import start_server as start

    env = os.environ | {
        "LORAFLOW_API_KEYS": KEY,
        "LORAFLOW_HOME": home,
        "LORAFLOW_SERVING__BACKEND": backend,
    }
    return start(port, env, Path(home) / "serve.log")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process so far (all its threads); None: this one."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_one(base: str, model: str, prompt: str, tokens: int) -> tuple[int, float, float]:
    """(generated tokens, time to first token, total time) of one streamed completion."""
    import httpx

    body = {"prompt": prompt, "max_new_tokens": tokens, "temperature": 0}
    start = time.perf_counter()
    first, count = None, 0
    with httpx.stream(
        "POST",
        f"{base}/v1/llm/completions-stream?model_endpoint_name={model}",
        json=body,
        headers={"x-api-key": KEY},
        timeout=600,
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            chunk = json.loads(line[5:])
            if first is None:
                first = time.perf_counter() - start
            count = chunk["output"]["num_completion_tokens"] or count
    return count, first or 0.0, time.perf_counter() - start


def drive(clients: int, rounds: int, texts: list[str], one: Any) -> tuple[list[Any], float]:
    """``clients`` threads, started together, each calling ``one(text)`` ``rounds`` times in
    turn; returns every result and the wall time."""
    results: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(k: int) -> None:
        barrier.wait()
        for r in range(rounds):
            out = one(texts[(k + r * clients) % len(texts)])
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def load(base: str, model: str, texts: list[str], clients: int, rounds: int, tokens: int) -> dict:
    """Streamed completions over HTTP under ``clients`` concurrent clients."""
    results, seconds = drive(
        clients, rounds, texts, lambda text: stream_one(base, model, text, tokens)
    )
    ttft = sorted(r[1] for r in results)
    return {"tokens": sum(r[0] for r in results), "seconds": seconds, "ttft": ttft}


def raw_engine(model: str, texts: list[str], clients: int, rounds: int, tokens: int) -> dict:
    """The same load without HTTP: ``clients`` threads submitting to the engine in process."""
    from loraflow.engine import Request, Sampling, get_engine

    engine = get_engine(model)
    sampling = Sampling(max_new_tokens=tokens, temperature=0)
    list(engine.submit([Request(engine.encode("warm up"), None, sampling)]))

    def one(text: str) -> int:
        return sum(1 for _ in engine.submit([Request(engine.encode(text), None, sampling)]))

    cpu = cpu_seconds()
    counts, seconds = drive(clients, rounds, texts, one)
    return {"tokens": sum(counts), "seconds": seconds, "cpu": cpu_seconds() - cpu}


def pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def serve_load(args: argparse.Namespace, texts: list[str], backend: str) -> tuple[dict, dict]:
    """1 client, then ``args.clients``, against a fresh ``loraflow serve`` on ``backend``."""
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as home:
        proc = start_server(args.port, home, backend)
        try:
            stream_one(base, args.model, "warm up", 4)  # loads the model (starts vLLM)
            one = load(base, args.model, texts, 1, args.rounds, args.tokens)
            cpu = cpu_seconds(proc.pid)
            many = load(base, args.model, texts, args.clients, args.rounds, args.tokens)
            many["cpu"] = cpu_seconds(proc.pid) - cpu
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return one, many


def report(name: str, args: argparse.Namespace, one: dict, many: dict) -> float:
    rate_one = one["tokens"] / one["seconds"]
    rate_many = many["tokens"] / many["seconds"]
    print(f"[{name}]")
    print(f" 1 client : {one['tokens']} tokens in {one['seconds']:.1f} s = {rate_one:.1f} tokens/s")
    print(
        f"{args.clients} clients: {many['tokens']} tokens in {many['seconds']:.1f} s "
        f"= {rate_many:.1f} tokens/s"
    )
    print(f"ratio {rate_many / rate_one:.2f}x (goal >= 5x)")
    print(
        f"time to first token under {args.clients} clients: "
        f"p50 {pct(many['ttft'], 50) * 1000:.0f} ms, p99 {pct(many['ttft'], 99) * 1000:.0f} ms"
    )
    return rate_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=5077)
    parser.add_argument("--backend", choices=["engine", "vllm"], default="engine")
    args = parser.parse_args()

    texts = prompts(args.clients * args.rounds)
    print(f"model {args.model}, greedy, {args.tokens} new tokens at most, streaming over HTTP")
    one, many = serve_load(args, texts, "engine")
    rate_many = report("loraflow serve, engine backend", args, one, many)
    if args.backend == "vllm":
        v_one, v_many = serve_load(args, texts, "vllm")
        rate_vllm = report("loraflow serve, vllm backend", args, v_one, v_many)
        for clients, engine_run, vllm_run in ((1, one, v_one), (args.clients, many, v_many)):
            ratio = (vllm_run["tokens"] / vllm_run["seconds"]) / (
                engine_run["tokens"] / engine_run["seconds"]
            )
            print(f"vLLM / engine, {clients} client(s): {ratio:.2f}x")
        print(f"(16-client aggregate: vLLM {rate_vllm:.1f} vs engine {rate_many:.1f} tokens/s)")
        return
    raw = raw_engine(args.model, texts, args.clients, args.rounds, args.tokens)
    rate_raw = raw["tokens"] / raw["seconds"]
    print(
        f"the same load on the engine in process, without HTTP: {rate_raw:.1f} tokens/s; "
        f"server overhead {100 * (1 - rate_many / rate_raw):.1f} % (goal <= 10 %)"
    )
    served, direct = many["cpu"] / many["tokens"], raw["cpu"] / raw["tokens"]
    print(
        f"CPU seconds per generated token: server process {served * 1000:.2f} ms, "
        f"engine in process {direct * 1000:.2f} ms"
    )
    print(f"server CPU per token ratio: {served / direct:.2f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
