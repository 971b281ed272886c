"""The Python SDK, shaped like LLM Engine's client: ``File`` (and, as they land, the rest)."""

from loraflow.sdk.file import File

__all__ = ["File"]
