"""Connecting loraflow's entry points to the Prefect API its settings name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from loraflow.settings import Settings, get_settings


@contextmanager
def prefect_api(settings: Settings | None = None) -> Iterator[None]:
    """Within this block Prefect talks to ``settings.prefect_api_url`` when it is set.

    Unset, Prefect's own configuration applies (PREFECT_API_URL, profiles, or an ephemeral
    API). Entry points (the CLI, ``python -m flows.…``) wrap their work in it.
    """
    url = (settings or get_settings()).prefect_api_url
    if not url:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield
