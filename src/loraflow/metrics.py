"""Prometheus metrics of this process; ``loraflow serve`` exposes them at ``/metrics`` beside
its HTTP metrics (requests by route and status, latency histograms).

Counted where the work happens: tokens, completions and time to first token in
``loraflow.completion``, queue depth, running requests and batch size in the engine's
scheduler. Label values are model names (bounded by the registry), never prompts or keys.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TOKENS = Counter("loraflow_generated_tokens", "Tokens generated, by served model.", ["model"])
COMPLETIONS = Counter(
    "loraflow_completions",
    "Completions that ended, by served model and finish reason (stop, length).",
    ["model", "finish_reason"],
)
FIRST_TOKEN = Histogram(
    "loraflow_time_to_first_token_seconds",
    "From a completion call to its first token, by served model.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
QUEUE = Gauge(
    "loraflow_engine_queue_depth",
    "Requests waiting to join a base model's running batch.",
    ["base_model"],
)
RUNNING = Gauge(
    "loraflow_engine_running_requests", "Requests in a base model's running batch.", ["base_model"]
)
BATCH = Histogram(
    "loraflow_engine_batch_size",
    "Requests decoded together in one step, by base model.",
    ["base_model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
