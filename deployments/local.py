"""Serve loraflow's deployments from this process: the local runner behind ``loraflow worker``.

A Prefect runner polls the API for scheduled runs of these deployments and runs each in a
subprocess; cancelling a run sends that subprocess SIGTERM, which training turns into a
checkpoint and a CANCELLED job. The deployments are those of ``configs/deployments.yaml``
(see ``deployments.build``), served without a work pool.
"""

from __future__ import annotations

from pathlib import Path


def serve(limit: int = 1, poll_seconds: float = 2.0, config: Path | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted.

    ``limit`` caps concurrent runs (one training at a time suits one device).
    """
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    from deployments.build import build

    deployments = build(path=config)
    with temporary_settings(updates={PREFECT_RUNNER_POLL_FREQUENCY: max(1, round(poll_seconds))}):
        prefect_serve(*deployments, limit=limit)
