"""The Python SDK, shaped like LLM Engine's client: File, FineTune, Model, Completion.

Each class loads with its own module on first use, so ``from loraflow import Completion``
imports neither Prefect nor polars.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loraflow.sdk.completion import Completion
    from loraflow.sdk.file import File
    from loraflow.sdk.fine_tune import FineTune
    from loraflow.sdk.model import Model

__all__ = ["Completion", "File", "FineTune", "Model"]
_MODULES = {
    "Completion": "completion",
    "File": "file",
    "FineTune": "fine_tune",
    "Model": "model",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(import_module(f"loraflow.sdk.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'loraflow.sdk' has no attribute {name!r}")
