"""``Completion``: LLM Engine's completion calls, served by the in-process engine.

``create`` returns a response, or with ``stream=True`` an iterator of chunks; ``acreate`` is the
asyncio twin of both. Beyond LLM Engine's client: chat ``messages`` (system turn and history),
``seed``, and ``generate`` for many inputs with ``num_generations`` each.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal, Unpack, overload

from pydantic import ValidationError

from loraflow import completion
from loraflow.aio import iterate_in_thread
from loraflow.completion import Params
from loraflow.errors import InvalidRequestError, first_problem
from loraflow.sdk.types import (
    BatchCompletionsJob,
    BatchResultLine,
    CancelBatchCompletionResponse,
    CompletionStreamResponse,
    CompletionSyncResponse,
    CreateBatchCompletionsResponse,
    GenerateOutput,
    GetBatchCompletionResponse,
    RunStatus,
    SamplingOptions,
)

Messages = list[dict[str, str]]
CREATE_TIMEOUT = 10.0  # seconds, as LLM Engine's client


# LLM Engine's client takes these after the prompt, in this order, positionally too.
POSITIONAL = (
    "max_new_tokens",
    "temperature",
    "stop_sequences",
    "return_token_log_probs",
    "timeout",
)


def _params(args: tuple[Any, ...], named: dict[str, Any], defaults: dict[str, Any]) -> Params:
    """The checked sampling settings of a call: positional ones in LLM Engine's order."""
    if len(args) > len(POSITIONAL):
        raise TypeError(f"at most {len(POSITIONAL)} sampling settings go by position")
    given = dict(zip(POSITIONAL, args, strict=False))
    if twice := sorted(given.keys() & named.keys()):
        raise TypeError(f"{', '.join(twice)} given by position and by name")
    return completion.params(**(defaults | given | named))


class Completion:
    """Completions from a base model or a fine-tune. Every method is a classmethod."""

    @overload
    @classmethod
    def create(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        *,
        stream: Literal[False] = False,
        messages: Messages | None = None,
        **params: Unpack[SamplingOptions],
    ) -> CompletionSyncResponse: ...

    @overload
    @classmethod
    def create(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        *,
        stream: Literal[True],
        messages: Messages | None = None,
        **params: Unpack[SamplingOptions],
    ) -> Iterator[CompletionStreamResponse]: ...

    @classmethod
    def create(
        cls,
        model: str,
        prompt: str | None = None,
        *args: Any,
        stream: bool = False,
        messages: Messages | None = None,
        **params: Any,
    ) -> CompletionSyncResponse | Iterator[CompletionStreamResponse]:
        """Complete ``prompt`` (or chat ``messages``) with ``model``.

        ``model`` is a base model, a fine-tuned model name, ``family@alias`` or
        ``family/version``. Sampling settings (``SamplingParams``) go by name, or after the
        prompt in LLM Engine's order (max_new_tokens, temperature, stop_sequences,
        return_token_log_probs, timeout); the timeout is 10 s unless given. Temperature 0 is
        greedy; ``seed`` makes sampling repeatable; text ends before the first stop sequence.
        Raises InvalidRequestError naming a bad field, NotFoundError for an unknown model,
        CompletionTimeoutError after ``timeout`` seconds. With ``stream=True`` the request is
        checked at once, then chunks carry new text.
        """
        p = _params(args, params, {"timeout": CREATE_TIMEOUT})
        if stream:
            return completion.stream(model, prompt, messages, p)
        return completion.complete(model, prompt, messages, p)

    @overload
    @classmethod
    async def acreate(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        *,
        stream: Literal[False] = False,
        messages: Messages | None = None,
        **params: Unpack[SamplingOptions],
    ) -> CompletionSyncResponse: ...

    @overload
    @classmethod
    async def acreate(
        cls,
        model: str,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        *,
        stream: Literal[True],
        messages: Messages | None = None,
        **params: Unpack[SamplingOptions],
    ) -> AsyncIterator[CompletionStreamResponse]: ...

    @classmethod
    async def acreate(
        cls,
        model: str,
        prompt: str | None = None,
        *args: Any,
        stream: bool = False,
        messages: Messages | None = None,
        **params: Any,
    ) -> CompletionSyncResponse | AsyncIterator[CompletionStreamResponse]:
        """The asyncio twin of ``create``: generation runs in a worker thread.

        With ``stream=True``, awaiting it checks the request and returns an async iterator
        of chunks; leaving the iteration early stops the generation.
        """
        p = _params(args, params, {"timeout": CREATE_TIMEOUT})
        if not stream:
            return await asyncio.to_thread(completion.complete, model, prompt, messages, p)
        chunks = await asyncio.to_thread(completion.stream, model, prompt, messages, p)
        return iterate_in_thread(lambda: chunks)

    @classmethod
    def submit(
        cls,
        model: str,
        prompt: str | None = None,
        *args: Any,
        messages: Messages | None = None,
        **params: Any,
    ) -> str:
        """Start a completion and return its run id at once; ``poll`` reads how it stands.
        The request is checked first (errors as ``create``). Not in LLM Engine's client."""
        from loraflow import runs

        return runs.start(model, prompt, messages, _params(args, params, {}))

    @classmethod
    def poll(cls, run_id: str) -> RunStatus:
        """How a ``submit``-ted run stands: IN_PROGRESS, or its text and usage, or its error.
        Raises NotFoundError for an unknown run id."""
        from loraflow import runs

        return runs.status(run_id)

    @classmethod
    def generate(
        cls,
        model: str,
        inputs: Sequence[str | Messages],
        num_generations: int = 1,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        *,
        batch_size: int = 32,
        **params: Unpack[SamplingOptions],
    ) -> list[GenerateOutput]:
        """``num_generations`` completions for each input, a prompt or chat messages.

        Inputs run batched, ``batch_size`` requests at a time; with ``seed``, generation ``g``
        of every input samples with ``seed + g``. Returns one GenerateOutput per input, in
        order, with its texts, outputs and token statistics.
        """
        p = _params((max_new_tokens, temperature), dict(params), {})
        return completion.generate(model, inputs, p, num_generations, batch_size)

    @classmethod
    async def agenerate(
        cls,
        model: str,
        inputs: Sequence[str | Messages],
        num_generations: int = 1,
        max_new_tokens: int = 20,
        temperature: float = 0.2,
        *,
        batch_size: int = 32,
        **params: Unpack[SamplingOptions],
    ) -> list[GenerateOutput]:
        """The asyncio twin of ``generate``."""
        call = functools.partial(
            cls.generate,
            model,
            inputs,
            num_generations,
            max_new_tokens,
            temperature,
            batch_size=batch_size,
            **params,
        )
        return await asyncio.to_thread(call)

    @classmethod
    def batch_create(
        cls,
        model: str,
        input_data_path: str | None = None,
        output_data_path: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        stop_sequences: list[str] | None = None,
        return_token_log_probs: bool = False,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        num_generations: int = 1,
        batch_size: int = 32,
        *,
        inputs: Sequence[str | Messages] | None = None,
    ) -> CreateBatchCompletionsResponse:
        """Start a batch job over the prompts at ``input_data_path``; returns its id at once.

        Input: a file id, ``s3://`` URL or local path of CSV/JSONL prompts (``prompt`` or
        ``messages``); or ``inputs``, prompts and chats given here (stored with the job, so a
        worker on another machine reads them). Results: JSONL at ``output_data_path``, by
        default in loraflow's store (``get_batch_completion`` says where, ``batch_results``
        reads them). Runs on a worker (``loraflow worker``).
        """
        from loraflow import batch
        from loraflow.jobs import start_job

        job_id = batch.JOB_IDS.new()
        if (input_data_path is None) == (inputs is None):
            raise InvalidRequestError("send either input_data_path or inputs, not both or neither")
        if inputs is not None:
            input_data_path = batch.store_inputs(job_id, inputs)
        try:
            config = batch.BatchCompleteConfig(
                model=model,
                input_data_path=input_data_path,
                output_data_path=output_data_path,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                stop_sequences=stop_sequences,
                return_token_log_probs=return_token_log_probs,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                num_generations=num_generations,
                batch_size=batch_size,
            )
        except ValidationError as exc:
            raise InvalidRequestError(first_problem(exc)) from None
        start_job(batch.FLOW_NAME, {"config": config.model_dump()}, job_id, batch.TAG)
        return CreateBatchCompletionsResponse(job_id=job_id)

    @classmethod
    def get_batch_completion(cls, job_id: str) -> GetBatchCompletionResponse:
        """A batch job's status, and where its results are. Raises NotFoundError."""
        from loraflow import batch, jobs

        with jobs.prefect_client() as client:
            run = jobs.find_job_run(
                client, batch.JOB_IDS.check(job_id), batch.TAG, "batch completion"
            )
        status = jobs.batch_status(run.state)
        result = batch.read_result(job_id) if status == "completed" else None
        config = batch.BatchCompleteConfig(**(run.parameters.get("config") or {}))
        return GetBatchCompletionResponse(
            job=BatchCompletionsJob(
                job_id=job_id,
                model=config.model,
                input_data_path=config.input_data_path,
                output_data_path=result.output_data_path
                if result
                else (config.output_data_path or batch.default_output(job_id)),
                status=status,
                created_at=run.created.isoformat() if run.created else "",
                completed_at=run.end_time.isoformat() if run.end_time else None,
                num_inputs=result.inputs if result else None,
                num_completion_tokens=result.completion_tokens if result else None,
            )
        )

    @classmethod
    def batch_results(cls, job_id: str) -> list[BatchResultLine]:
        """A completed batch job's results, in input order. Not in LLM Engine's client.

        Raises NotFoundError for an unknown job, InvalidRequestError while it has not
        completed (the message says its status).
        """
        from loraflow import batch

        status = cls.get_batch_completion(job_id).job.status
        if status != "completed":
            raise InvalidRequestError(f"{job_id} is {status}; results come once it completes")
        return [BatchResultLine.model_validate(line) for line in batch.read_results(job_id)]

    @classmethod
    def cancel_batch_completion(cls, job_id: str) -> CancelBatchCompletionResponse:
        """Stop a batch job; it writes no results. False when it has already ended."""
        from loraflow import batch
        from loraflow.jobs import cancel_job_run, find_job_run, prefect_client

        with prefect_client() as client:
            run = find_job_run(client, batch.JOB_IDS.check(job_id), batch.TAG, "batch completion")
            return CancelBatchCompletionResponse(success=cancel_job_run(client, run))
