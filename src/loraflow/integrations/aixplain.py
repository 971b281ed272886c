"""A loraflow model with aiXplain's verbs: ``LLM("smollm2-135m-instruct").run("Hi")``.

``run`` starts a completion and polls until it ends; ``run_async`` returns at once with a poll
URL that ``poll`` reads once and ``sync_poll`` reads until done, with aiXplain's backoff
(from ``wait_time``, at least 0.2 s, x1.1 a poll while under 60 s); ``run_stream`` yields the
text as it comes. Results are ``ModelResponse``s (``status``, ``data``, ``completed``,
``usage``, ``run_time``, ``error_message``; read as attributes or keys). Like aiXplain's, the
run verbs report failures in the response (``status="FAILED"``) instead of raising.

In this process by default; with ``base_url`` (or ``LORAFLOW_BASE_URL``) the handle calls a
``loraflow serve`` there: its ``/api/v1/execute`` and ``/api/v1/data`` routes, so a poll URL
works from any machine that reaches the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loraflow.chat import from_parts
from loraflow.errors import LoraflowError
from loraflow.integrations.client import InProcess, Remote, Reply, Request, Sampling, connect
from loraflow.sdk.fine_tune import metrics_of
from loraflow.types import RunUsage

log = logging.getLogger("loraflow.integrations.aixplain")
LOCAL = "loraflow:runs/"  # poll URLs of runs in this process


class ModelResponse(BaseModel):
    """aiXplain's response: attributes, or ``response["data"]``."""

    model_config = ConfigDict(extra="allow")
    status: str
    data: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    completed: bool = False
    error_message: str = ""
    used_credits: float = 0
    run_time: float = 0
    usage: dict[str, int] | None = None
    url: str | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def _failed(message: str, **more: Any) -> ModelResponse:
    return ModelResponse(status="FAILED", completed=False, error_message=message, **more)


class FinetuneStatus(BaseModel):
    """A fine-tune's state as aiXplain reports it, at the latest step or after an epoch."""

    status: str
    model_status: str
    epoch: float | None = None
    training_loss: float | None = None
    validation_loss: float | None = None


_STATUS = {  # loraflow's job status -> aiXplain's asset status
    "PENDING": "pending",
    "RUNNING": "in_progress",
    "SUCCESS": "completed",
    "FAILURE": "failed",
    "CANCELLED": "canceled",
}


class LLM:
    """A loraflow model (base, fine-tune, ``family@alias``) with aiXplain's verbs."""

    def __init__(
        self,
        id: str,
        name: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        finetune_id: str | None = None,
    ) -> None:
        self.id = id
        self.name = name or id
        self.finetune_id = finetune_id
        self._base_url = base_url
        self.client: InProcess | Remote = connect(base_url, api_key)

    @classmethod
    def from_fine_tune(cls, fine_tune_id: str, **kwargs: Any) -> LLM:
        """The model a fine-tune job makes, with ``check_finetune_status`` on that job."""
        model = cls._fine_tune(connect(kwargs.get("base_url"), kwargs.get("api_key")), fine_tune_id)
        return cls(model["fine_tuned_model"] or fine_tune_id, finetune_id=fine_tune_id, **kwargs)

    def __repr__(self) -> str:
        where = self.client.base_url if isinstance(self.client, Remote) else "this process"
        return f"<LLM: {self.name} on loraflow ({where})>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "finetune_id": self.finetune_id,
            "base_url": self._base_url,
        }  # never the key

    @classmethod
    def from_dict(cls, data: dict[str, Any], api_key: str | None = None) -> LLM:
        return cls(
            data["id"],
            data.get("name"),
            base_url=data.get("base_url"),
            api_key=api_key,
            finetune_id=data.get("finetune_id"),
        )

    # -- running -------------------------------------------------------------------------

    def run(
        self,
        data: str,
        context: str | None = None,
        prompt: str | None = None,
        history: list[dict[str, Any]] | None = None,
        temperature: float = 0.001,
        max_tokens: int = 128,
        top_p: float = 1.0,
        name: str = "model_process",
        timeout: float = 300,
        parameters: dict[str, Any] | None = None,
        wait_time: float = 0.5,
    ) -> ModelResponse:
        """Run and wait: ``run_async``, then ``sync_poll`` until done or ``timeout`` s."""
        start = time.monotonic()
        response = self.run_async(
            data, context, prompt, history, temperature, max_tokens, top_p, name, parameters
        )
        if response.status == "FAILED" or response.url is None:
            return response.model_copy(update={"run_time": time.monotonic() - start})
        return self.sync_poll(response.url, name=name, wait_time=wait_time, timeout=timeout)

    def run_async(
        self,
        data: str,
        context: str | None = None,
        prompt: str | None = None,
        history: list[dict[str, Any]] | None = None,
        temperature: float = 0.001,
        max_tokens: int = 128,
        top_p: float = 1.0,
        name: str = "model_process",
        parameters: dict[str, Any] | None = None,
    ) -> ModelResponse:
        """Start a run; ``status="IN_PROGRESS"`` and its poll ``url``, or FAILED and why."""
        body = {
            "data": data,
            "context": context,
            "prompt": prompt,
            "history": history,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "top_p": top_p,
            **(parameters or {}),
        }
        try:
            if isinstance(self.client, Remote):
                started = self.client.post(f"/api/v1/execute/{self.id}", body)
                return ModelResponse(status="IN_PROGRESS", url=started["url"])
            return ModelResponse(status="IN_PROGRESS", url=LOCAL + self._submit(body))
        except (LoraflowError, TypeError) as exc:
            log.warning("run of %s (%s) failed to start: %s", self.id, name, exc)
            return _failed(str(exc))

    def _submit(self, body: dict[str, Any]) -> str:
        from loraflow.sdk import Completion

        prompt, messages = from_parts(
            body.pop("data"), body.pop("context"), body.pop("prompt"), body.pop("history")
        )
        return Completion.submit(
            self.id,
            prompt,
            messages=messages,
            max_new_tokens=body.pop("max_tokens"),
            temperature=body.pop("temperature"),
            **body,
        )

    def poll(self, poll_url: str, name: str = "model_process") -> ModelResponse:
        """Read a run's state once."""
        try:
            if poll_url.startswith(LOCAL):
                from loraflow.sdk import Completion

                state = Completion.poll(poll_url.removeprefix(LOCAL)).model_dump(by_alias=True)
            elif isinstance(self.client, Remote) and poll_url.startswith(self.client.base_url):
                state = self.client.get(poll_url.removeprefix(self.client.base_url))
            else:
                return _failed(f"{poll_url} is not a loraflow poll URL of {self!r}")
        except LoraflowError as exc:
            return _failed(str(exc))
        return ModelResponse(
            status=state["status"],
            data=state.get("data") or "",
            completed=state["completed"],
            error_message=state.get("error_message") or "",
            run_time=state.get("runTime") or 0,
            usage=state.get("usage"),
        )

    def sync_poll(
        self,
        poll_url: str,
        name: str = "model_process",
        wait_time: float = 0.5,
        timeout: float = 300,
    ) -> ModelResponse:
        """Poll until the run ends or ``timeout`` s pass (then FAILED, saying so)."""
        start = time.monotonic()
        wait = max(wait_time, 0.2)
        while True:
            response = self.poll(poll_url, name)
            if response.completed or response.status == "FAILED":
                return response
            if time.monotonic() - start + wait > timeout:
                return _failed(
                    f"no response in {timeout} s; poll {poll_url} again for it", url=poll_url
                )
            time.sleep(wait)
            if wait < 60:
                wait *= 1.1

    def run_stream(
        self,
        data: str,
        context: str | None = None,
        prompt: str | None = None,
        history: list[dict[str, Any]] | None = None,
        temperature: float = 0.001,
        max_tokens: int = 128,
        top_p: float = 1.0,
        timeout: float = 300,
    ) -> Iterator[ModelResponse]:
        """The text as it comes: IN_PROGRESS responses with new text, then one SUCCESS with
        the whole text and usage (or FAILED)."""
        try:
            text, messages = from_parts(data, context, prompt, history)
            request = Request(prompt=text, messages=messages)
            s = Sampling(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, timeout=timeout
            )
            for piece in self.client.stream(self.id, request, s):
                if isinstance(piece, Reply):
                    yield ModelResponse(
                        status="SUCCESS",
                        data=piece.text,
                        completed=True,
                        usage=RunUsage(
                            prompt_tokens=piece.prompt_tokens,
                            completion_tokens=piece.completion_tokens,
                        ).model_dump(),
                    )
                else:
                    yield ModelResponse(status="IN_PROGRESS", data=piece)
        except LoraflowError as exc:
            yield _failed(str(exc))

    # -- fine-tunes ------------------------------------------------------------------------

    @staticmethod
    def _fine_tune(client: InProcess | Remote, job_id: str) -> dict[str, Any]:
        if isinstance(client, Remote):
            return dict(client.get(f"/v1/llm/fine-tunes/{job_id}"))
        from loraflow.sdk import FineTune

        return FineTune.get(job_id).model_dump()

    def check_finetune_status(self, after_epoch: int | None = None) -> FinetuneStatus:
        """The fine-tune's status, with its epoch and losses at the latest step, or at the
        first step after epoch ``after_epoch`` (its first validation loss after it)."""
        if self.finetune_id is None:
            raise LoraflowError(
                f"{self.id} is not a fine-tune's handle: use LLM.from_fine_tune(job_id)"
            )
        job = self._fine_tune(self.client, self.finetune_id)
        if isinstance(self.client, Remote):
            events = self.client.get(f"/v1/llm/fine-tunes/{self.finetune_id}/events")["events"]
            found = (metrics_of(e["message"]) for e in events)
            steps = [m for m in found if m is not None and "epoch" in m]
        else:
            from loraflow.sdk import FineTune

            steps = [m for m in FineTune.progress(self.finetune_id).history if "epoch" in m]
        if after_epoch is not None:
            steps = [m for m in steps if m["epoch"] > after_epoch]
        chosen = (steps[:1] if after_epoch is not None else steps[-1:]) or [{}]
        trained = [m["loss"] for m in steps if "loss" in m]
        evaluated = [m["eval_loss"] for m in steps if "eval_loss" in m]
        pick = 0 if after_epoch is not None else -1
        status = _STATUS.get(job["status"], job["status"].lower())
        return FinetuneStatus(
            status=status,
            model_status="onboarded" if job["status"] == "SUCCESS" else status,
            epoch=chosen[0].get("epoch"),
            training_loss=trained[pick] if trained else None,
            validation_loss=evaluated[pick] if evaluated else None,
        )
