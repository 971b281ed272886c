"""loraflow's Prefect flows, one deployable flow per module, each taking one pydantic config."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def main(flow: Any, argv: list[str]) -> None:
    """``python -m flows.<name> [config.yaml]``: run ``flow`` in this process on the file's
    config (the defaults without one) and print its result as JSON."""
    from deployments.build import config_model, read_yaml
    from loraflow.orchestration import prefect_api

    raw = read_yaml(Path(argv[1])) if len(argv) > 1 else {}
    with prefect_api():
        print(flow(config_model(flow).model_validate(raw)).model_dump_json(indent=2))
