"""aiXplain-style execute and poll: ``POST /api/v1/execute/{model}`` starts a completion and
answers ``{"status": "IN_PROGRESS", "url": <poll URL>}`` at once; ``GET /api/v1/data/{id}``
answers ``completed``, ``status``, ``data``, ``usage``, ``runTime`` (``loraflow.runs``), so a
client on another machine runs, then polls.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from loraflow import completion, runs
from loraflow.chat import from_parts
from loraflow.server.errors import NOT_FOUND
from loraflow.types import JSON_INTEGER, ModelReference, Seed

router = APIRouter()


class Turn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class ExecuteBody(BaseModel):
    """aiXplain's LLM payload: the user's text, a system ``context``, a ``prompt`` before the
    text, earlier turns in ``history``, and sampling settings (its defaults)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    data: str = Field(min_length=1)
    context: str | None = None
    prompt: str | None = None
    history: list[Turn] | None = None
    temperature: float = Field(0.001, ge=0, le=1)
    max_tokens: Annotated[int, Field(ge=1), JSON_INTEGER] = 128
    top_p: float | None = Field(1.0, gt=0, le=1)
    seed: Seed | None = None


@router.post("/api/v1/execute/{model:path}", responses=NOT_FOUND)
def execute(model: Annotated[ModelReference, Path()], body: ExecuteBody, request: Request) -> Any:
    history = [t.model_dump() for t in body.history or ()]
    prompt, messages = from_parts(body.data, body.context, body.prompt, history)
    params = completion.params(
        max_new_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
    )
    run_id = runs.start(model, prompt, messages, params)
    url = str(request.url_for("poll_run", run_id=run_id))
    return {"status": "IN_PROGRESS", "completed": False, "url": url, "data": url}


@router.get("/api/v1/data/{run_id}", name="poll_run", responses=NOT_FOUND)
def poll_run(run_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]) -> Any:
    return runs.status(run_id).model_dump(by_alias=True, exclude_none=True)
