"""loraflow's Prefect flows, one deployable flow per module, each taking one pydantic config."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def config_model(flow: Any) -> type[BaseModel]:
    """The pydantic model of a flow's one parameter, ``config``."""
    return typing.get_type_hints(flow.fn)["config"]


def main(flow: Any, argv: list[str]) -> None:
    """``python -m flows.<name> [config.yaml]``: run ``flow`` in this process on the file's
    config (the defaults without one) and print its result as JSON."""
    from loraflow.jobs import prefect_api
    from loraflow.settings import read_yaml

    raw = read_yaml(Path(argv[1])) if len(argv) > 1 else {}
    with prefect_api():
        result = flow(config_model(flow).model_validate(raw))
    if isinstance(result, BaseModel):
        print(result.model_dump_json(indent=2))
    else:  # a final state: a cancelled fine-tune
        print(json.dumps({"state": result.name, "message": result.message}))
        raise SystemExit(1)
