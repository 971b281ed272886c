"""Benchmark: the HTTP service under sustained load, 64 streaming clients for 60 s.

A ``loraflow serve`` subprocess serves the model; 64 clients each stream one completion after
another until the time is up, alternating LLM Engine's stream and OpenAI's chat stream. A
request counts as an error unless it answers 200 and its stream ends properly (a final chunk
with no error; OpenAI's ``[DONE]``). Printed: requests/s, generated tokens/s, time to first
token p50/p99, errors, and the server's RSS and threads before and after. The baseline is the
same load on the engine in this process, without HTTP (64 threads submitting to its scheduler,
as many requests each): the ratio is what HTTP, the two APIs and the server cost under load.

    python benchmarks/load.py [--model smollm2-135m-instruct] [--clients 64] [--seconds 60]

``tests/reliability/test_load.py`` runs the same load on a tiny model and checks the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
KEY = "bench-key"


@dataclass
class LoadReport:
    """What a load run measured."""

    clients: int
    seconds: float = 0.0
    requests: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft_ms(self, q: int) -> float:
        return 1000 * percentile(self.ttft, q) if self.ttft else float("nan")


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[q - 1]


def prompts(n: int = 64) -> list[str]:
    import polars as pl

    frame = pl.read_csv(ROOT / "src/loraflow/datasets/customer_support.csv", infer_schema=False)
    return list(frame["prompt"][:n])


async def _llmengine_stream(client: Any, model: str, prompt: str, tokens: int) -> tuple[int, float]:
    """(tokens, seconds to first token) of one LLM Engine stream; raises on any fault."""
    start = time.perf_counter()
    first, count, finished = None, 0, False
    body = {"prompt": prompt, "max_new_tokens": tokens, "temperature": 0}
    url = f"/v1/llm/completions-stream?model_endpoint_name={model}"
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("error"):
                raise RuntimeError(f"error chunk: {chunk['error']}")
            first = first if first is not None else time.perf_counter() - start
            output = chunk["output"]
            count = output["num_completion_tokens"] or count
            finished = finished or bool(output["finished"])
    if not finished:
        raise RuntimeError("the stream ended without its final chunk")
    return count, first or 0.0


async def _openai_stream(client: Any, model: str, prompt: str, tokens: int) -> tuple[int, float]:
    """(tokens, seconds to first token) of one OpenAI chat stream; raises on any fault."""
    start = time.perf_counter()
    first, count, done = None, 0, False
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"error chunk: {chunk['error']}")
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first if first is not None else time.perf_counter() - start
                count += 1
    if not done:
        raise RuntimeError("the stream ended without [DONE]")
    return count, first or 0.0


async def _drive_http(
    base: str, model: str, clients: int, seconds: float, tokens: int, texts: list[str], key: str
) -> LoadReport:
    import httpx

    report = LoadReport(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(120.0)
    async with httpx.AsyncClient(
        base_url=base, headers={"x-api-key": key}, limits=limits, timeout=timeout
    ) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client(k: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                call = _openai_stream if (k + n) % 2 else _llmengine_stream
                try:
                    count, first = await call(client, model, texts[(k + n) % len(texts)], tokens)
                except Exception as exc:  # every fault is counted, none stops the run
                    report.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                else:
                    report.tokens += count
                    report.ttft.append(first)
                report.requests += 1
                n += 1

        await asyncio.gather(*(one_client(k) for k in range(clients)))
        report.seconds = time.perf_counter() - start
    return report


def drive_http(
    base: str,
    model: str,
    clients: int = 64,
    seconds: float = 60,
    tokens: int = 32,
    texts: list[str] | None = None,
    api_key: str = KEY,
) -> LoadReport:
    """``clients`` concurrent streaming clients against the server at ``base`` for ``seconds``,
    each starting its next request when the last one ends."""
    texts = texts or prompts()
    return asyncio.run(_drive_http(base, model, clients, seconds, tokens, texts, api_key))


def drive_engine(
    model: str, clients: int, seconds: float, tokens: int, texts: list[str]
) -> LoadReport:
    """The same load on the engine's scheduler in this process, without HTTP."""
    from loraflow.engine import Request, Sampling, get_engine

    engine = get_engine(model)
    sampling = Sampling(max_new_tokens=tokens, temperature=0)
    list(engine.submit([Request(engine.encode("warm up"), None, sampling)]))
    report = LoadReport(clients)
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def one_client(k: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            first, count = None, 0
            for _ in engine.submit(
                [Request(engine.encode(texts[(k + n) % len(texts)]), None, sampling)]
            ):
                first = first if first is not None else time.perf_counter() - began
                count += 1
            with lock:
                report.requests += 1
                report.tokens += count
                report.ttft.append(first or 0.0)
            n += 1

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.seconds = time.perf_counter() - start
    return report


def start_server(
    port: int, env: dict[str, str], log: Path, timeout: float = 600
) -> subprocess.Popen:
    """``loraflow serve`` on 127.0.0.1:``port``, its output in ``log``, ready to answer within
    ``timeout`` seconds (the default leaves room to start vLLM first)."""
    import httpx

    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loraflow", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not start:\n{log.read_text()[-2000:]}")


def footprint(pid: int) -> tuple[int, int]:
    """(RSS bytes, threads) of a process."""
    import psutil

    process = psutil.Process(pid)
    return process.memory_info().rss, process.num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=5078)
    args = parser.parse_args()

    texts = prompts()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as home:
        env = os.environ | {"LORAFLOW_API_KEYS": KEY, "LORAFLOW_HOME": home}
        proc = start_server(args.port, env, Path(home) / "serve.log")
        try:
            drive_http(base, args.model, args.clients, 5, 4, texts)  # loads the model, warms up
            before = footprint(proc.pid)
            http = drive_http(base, args.model, args.clients, args.seconds, args.tokens, texts)
            time.sleep(2)
            after = footprint(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        raw = drive_engine(args.model, args.clients, args.seconds, args.tokens, texts)
    print(
        f"model {args.model}, greedy, {args.tokens} new tokens at most, {args.clients} streaming "
        f"clients for {args.seconds:.0f} s (LLM Engine and OpenAI chat streams, alternating)"
    )
    for name, r in (("loraflow serve (HTTP)", http), ("engine in process", raw)):
        print(
            f"{name:>22}: {r.requests} requests, {r.requests_per_second:.2f} requests/s, "
            f"{r.tokens_per_second:.1f} tokens/s, TTFT p50 {r.ttft_ms(50):.0f} ms "
            f"p99 {r.ttft_ms(99):.0f} ms, errors {len(r.errors)}"
        )
    ratio = http.requests_per_second / raw.requests_per_second
    print(f"ratio (HTTP / in process, requests/s): {ratio:.2f}x")
    print(
        f"server RSS {before[0] / 2**20:.0f} -> {after[0] / 2**20:.0f} MiB, "
        f"threads {before[1]} -> {after[1]}"
    )
    for error in http.errors[:5]:
        print("error:", error)


if __name__ == "__main__":
    main()
