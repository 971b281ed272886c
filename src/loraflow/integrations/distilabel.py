"""A distilabel LLM on loraflow's models: ``LoraflowLLM(model="smollm2-135m-instruct")``.

Online, ``generate`` sends all of a step's inputs as one batched call (``agenerate`` one at a
time, asyncio); each output carries per-generation ``statistics`` (input and output tokens).
With ``use_offline_batch_generation=True`` the inputs become a loraflow batch job: the first
call submits it and keeps its id in ``jobs_ids``, later calls raise distilabel's
not-finished exception until the job completes, then return its results in input order.

``root_logging_kept()`` puts back the logging a pipeline's run takes over (see there).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from distilabel.exceptions import DistilabelOfflineBatchGenerationNotFinishedException
from distilabel.models.llms.base import AsyncLLM
from pydantic import Field, PositiveInt

from loraflow.integrations.client import Request

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, GenerateOutput

WAITING = ("queued", "running")


@contextmanager
def root_logging_kept() -> Iterator[None]:
    """Run a distilabel pipeline inside this to keep the process's logging as it was.

    A pipeline's ``run`` replaces the root logger's handlers with a queue handler for its
    step processes and leaves it behind when it ends; later log records in this process
    (a loraflow flow's, a test's) then fail on the closed queue, recursively under Prefect.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _input(chat: Any) -> str | list[dict[str, str]]:
    """A distilabel input (chat turns, or a bare string) as a loraflow prompt or chat."""
    if isinstance(chat, str):
        return chat
    request = Request.of([{"role": t["role"], "content": t["content"]} for t in chat])
    return request.prompt if request.prompt is not None else (request.messages or [])


def _output(generations: list[str], statistics: Any) -> GenerateOutput:
    return {
        "generations": list(generations),
        "statistics": {
            "input_tokens": list(statistics.input_tokens),
            "output_tokens": list(statistics.output_tokens),
        },
    }


class LoraflowLLM(AsyncLLM):
    """A loraflow model (base, fine-tune, ``family@alias``) as a distilabel ``AsyncLLM``."""

    model: str = Field(description="The loraflow model: a base, a fine-tune or family@alias.")
    batch_size: PositiveInt = Field(32, description="Inputs generated together online.")
    jobs_ids: tuple[str, ...] | None = Field(None, description="The offline batch job's id.")

    def load(self) -> None:
        """Check the model exists (NotFoundError names it) before a pipeline runs."""
        from loraflow.sdk import Model

        super().load()
        Model.get(self.model)

    @property
    def model_name(self) -> str:
        return self.model

    async def agenerate(
        self,
        input: FormattedInput,
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float | None = None,
        stop_sequences: list[str] | None = None,
        seed: int | None = None,
    ) -> GenerateOutput:
        """``num_generations`` completions of one input."""
        from loraflow.sdk import Completion

        out = await Completion.agenerate(
            self.model,
            [_input(input)],
            num_generations,
            max_new_tokens,
            temperature,
            top_p=top_p,
            stop_sequences=stop_sequences,
            seed=seed,
        )
        return _output(out[0].generations, out[0].statistics)

    def generate(
        self,
        inputs: list[FormattedInput],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float | None = None,
        stop_sequences: list[str] | None = None,
        seed: int | None = None,
    ) -> list[GenerateOutput]:
        """``num_generations`` completions of every input, generated in batches."""
        from loraflow.sdk import Completion

        outs = Completion.generate(
            self.model,
            [_input(x) for x in inputs],
            num_generations,
            max_new_tokens,
            temperature,
            batch_size=self.batch_size,
            top_p=top_p,
            stop_sequences=stop_sequences,
            seed=seed,
        )
        return [_output(o.generations, o.statistics) for o in outs]

    def offline_batch_generate(
        self,
        inputs: list[FormattedInput] | None = None,
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float | None = None,
        stop_sequences: list[str] | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> list[GenerateOutput]:
        """Submit ``inputs`` as a loraflow batch job, or return its results once done."""
        from loraflow.sdk import Completion

        if self.jobs_ids:
            return self._batch_results()
        if not inputs:
            raise ValueError("No `inputs` were given and no `jobs_ids` were found.")
        job = Completion.batch_create(
            self.model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_sequences=stop_sequences,
            top_p=top_p,
            seed=seed,
            num_generations=num_generations,
            batch_size=self.batch_size,
            inputs=[_input(x) for x in inputs],
        )
        self.jobs_ids = (job.job_id,)
        raise DistilabelOfflineBatchGenerationNotFinishedException(jobs_ids=self.jobs_ids)

    def _batch_results(self) -> list[GenerateOutput]:
        from loraflow.sdk import Completion

        outputs: list[GenerateOutput] = []
        for job_id in self.jobs_ids or ():
            status = Completion.get_batch_completion(job_id).job.status
            if status in WAITING:
                raise DistilabelOfflineBatchGenerationNotFinishedException(jobs_ids=self.jobs_ids)
            if status != "completed":
                self.jobs_ids = None
                raise RuntimeError(
                    f"loraflow batch job {job_id} is {status}: its events say why "
                    f"(`loraflow batch get {job_id}`); the next call submits the inputs again"
                )
            lines = sorted(Completion.batch_results(job_id), key=lambda line: line.index)
            outputs += [_output(line.generations, line.statistics) for line in lines]
        return outputs
