"""The Python SDK, shaped like LLM Engine's client: File, FineTune, Model, Completion."""

from loraflow.sdk.completion import Completion
from loraflow.sdk.file import File
from loraflow.sdk.fine_tune import FineTune
from loraflow.sdk.model import Model

__all__ = ["Completion", "File", "FineTune", "Model"]
