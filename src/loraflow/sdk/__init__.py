"""The Python SDK, shaped like LLM Engine's client: ``File``, ``FineTune`` and, later, the rest."""

from loraflow.sdk.file import File
from loraflow.sdk.fine_tune import FineTune

__all__ = ["File", "FineTune"]
