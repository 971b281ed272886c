"""loraflow: self-hosted LoRA fine-tuning and completion, orchestrated by Prefect.

``from loraflow import File`` gives the LLM-Engine-shaped SDK. Attributes load on first use,
so importing loraflow stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from loraflow.errors import (
    ConfigError,
    DataValidationError,
    InvalidRequestError,
    LoraflowError,
    NotFoundError,
    StorageError,
)

if TYPE_CHECKING:
    from loraflow.sdk import Completion, File, FineTune, Model

__version__ = "0.1.0"
__all__ = [
    "Completion",
    "ConfigError",
    "DataValidationError",
    "File",
    "FineTune",
    "InvalidRequestError",
    "LoraflowError",
    "Model",
    "NotFoundError",
    "StorageError",
    "__version__",
]
_SDK = frozenset({"Completion", "File", "FineTune", "Model"})


def __getattr__(name: str) -> Any:
    if name in _SDK:  # loraflow.sdk loads each class on first use
        return getattr(import_module("loraflow.sdk"), name)
    raise AttributeError(f"module 'loraflow' has no attribute {name!r}")
