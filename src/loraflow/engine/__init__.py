"""The completion engine: batched generation over a base model with LoRA adapters."""

from loraflow.engine.engine import Engine, get_engine, resolve_served
from loraflow.engine.generation import Request, Sampling, TokenEvent

__all__ = ["Engine", "Request", "Sampling", "TokenEvent", "get_engine", "resolve_served"]
