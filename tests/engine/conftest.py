"""Engine tests reuse the training fixtures (tiny_plan)."""

from tests.training.conftest import tiny_plan  # noqa: F401
