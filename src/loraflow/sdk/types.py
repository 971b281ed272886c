"""The SDK's response types (defined in ``loraflow.types``, shared with the HTTP service)."""

from loraflow.types import *  # noqa: F403
from loraflow.types import __all__  # noqa: F401
