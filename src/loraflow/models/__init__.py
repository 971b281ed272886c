"""Base models: the zoo of known models and their local preparation."""

from loraflow.models.prepare import ModelUnavailableError, model_revision, prepare
from loraflow.models.zoo import ModelSpec, load_zoo, resolve_model

__all__ = [
    "ModelSpec",
    "ModelUnavailableError",
    "load_zoo",
    "model_revision",
    "prepare",
    "resolve_model",
]
