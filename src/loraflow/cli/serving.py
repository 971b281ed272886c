"""Commands on served models: list, show, delete and download them, complete, batch, serve."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from loraflow.cli._app import app, err, handle_errors, out, prefect

models_app = typer.Typer(help="Served models (base and fine-tuned): list, get, delete, download.")
app.add_typer(models_app, name="models")
batch_app = typer.Typer(help="Batch completion jobs: create, get, cancel.")
app.add_typer(batch_app, name="batch")


@models_app.command("list")
@handle_errors
def models_list() -> None:
    """Base models, then fine-tunes (oldest first) with their registry version and aliases."""
    from loraflow import Model

    table = Table(
        Column("name", no_wrap=True), "base", "version", "aliases", "eval loss", "created"
    )
    for m in Model.list().model_endpoints:
        loss = m.metrics.get("eval_loss")
        table.add_row(
            m.name,
            "" if not m.fine_tuned else m.base_model,
            "" if m.version is None else str(m.version),
            ", ".join(m.aliases),
            "" if loss is None else f"{loss:.4f}",
            m.created_at.strftime("%Y-%m-%d %H:%M:%S") if m.created_at else "",
        )
    out.print(table)


@models_app.command("get")
@handle_errors
def models_get(model: str) -> None:
    """Show a model by name, NAME@ALIAS or NAME/VERSION."""
    from loraflow import Model

    out.print_json(Model.get(model).model_dump_json())


@models_app.command("delete")
@handle_errors
def models_delete(model: str) -> None:
    """Delete a fine-tune (registry version, adapter, record); its MLflow run stays."""
    from loraflow import Model

    deleted = Model.delete(model).deleted
    out.print(f"deleted {model}" if deleted else f"no fine-tuned model {model}")


@models_app.command("download")
@handle_errors
def models_download(
    model: str,
    to: Annotated[
        Path | None, typer.Option(help="Fetch the files into this folder (else print URLs).")
    ] = None,
) -> None:
    """The fine-tune's adapter files: URLs (presigned for an hour on S3), or fetched."""
    from loraflow import Model

    urls = Model.download(model).urls
    if to is None:
        out.print_json(json.dumps({"urls": urls}))
        return
    to.mkdir(parents=True, exist_ok=True)
    for name, url in urls.items():
        with urllib.request.urlopen(url) as response:  # file: or presigned https:
            (to / name).write_bytes(response.read())
    out.print(f"{len(urls)} files in {to}; load with PeftModel.from_pretrained(base, {str(to)!r})")


@app.command()
@handle_errors
def complete(
    model: Annotated[str, typer.Argument(help="Base model, fine-tune, NAME@ALIAS, NAME/VERSION.")],
    prompt: Annotated[str, typer.Argument(help="The prompt (a user turn for chat models).")],
    max_new_tokens: Annotated[int, typer.Option(help="New tokens, at most.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 is greedy; at most 1.")] = 0.2,
    system: Annotated[str | None, typer.Option(help="A system message first.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop sequence (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Makes sampling repeatable.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 120,
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="Load the model in this process even when a loraflow serve runs."
        ),
    ] = False,
) -> None:
    """Complete a prompt, printing the text as it is generated.

    Sent to the running loraflow serve (LORAFLOW_BASE_URL, else the stack's) where there is
    one, so its loaded models answer at once; else the model loads in this process.
    """
    from loraflow import Completion

    messages = None
    if system is not None:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    service = None if local else _running_service()
    if service is not None:
        from loraflow.integrations.client import Request, Sampling

        err.print(f"via {service.base_url} (--local loads the model here)", style="dim")
        sampling = Sampling(
            max_tokens=max_new_tokens, temperature=temperature, stop=stop, seed=seed,
            timeout=timeout,
        )  # fmt: skip
        request = Request(None if messages else prompt, messages)
        for piece in service.stream(model, request, sampling):
            if isinstance(piece, str):
                out.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
        out.print()
        return
    chunks = Completion.create(
        model,
        None if messages else prompt,
        max_new_tokens,
        temperature,
        stop_sequences=stop,
        timeout=timeout,
        stream=True,
        seed=seed,
        messages=messages,
    )
    for chunk in chunks:
        if chunk.output is not None:
            out.print(chunk.output.text, end="", highlight=False, markup=False, soft_wrap=True)
    out.print()


def _running_service() -> Any:
    """The loraflow serve this command should use: LORAFLOW_BASE_URL's, else the one this
    home's stack runs (with its key), else None."""
    from loraflow.integrations.client import Remote, connect
    from loraflow.jobs import stack_api_key, stack_url
    from loraflow.settings import get_settings

    settings = get_settings()
    if settings.base_url:
        return connect()
    url = stack_url(settings, "serve")
    return None if url is None else Remote(url, stack_api_key(settings))


@batch_app.command("create")
@handle_errors
def batch_create(
    model: str,
    input_data_path: Annotated[str, typer.Argument(help="file-… id, s3:// URL or CSV/JSONL path")],
    output_data_path: Annotated[str | None, typer.Option(help="s3:// URL or path")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 64,
    temperature: Annotated[float, typer.Option()] = 0.0,
    num_generations: Annotated[int, typer.Option()] = 1,
) -> None:
    """Start a batch completion job on the worker; prints its id."""
    from loraflow import Completion

    with prefect():
        job = Completion.batch_create(
            model,
            input_data_path,
            output_data_path,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            num_generations=num_generations,
        )
    out.print(job.job_id)


@batch_app.command("get")
@handle_errors
def batch_get(job_id: str) -> None:
    """Show a batch job's status and where its results are."""
    from loraflow import Completion

    with prefect():
        out.print_json(Completion.get_batch_completion(job_id).model_dump_json())


@batch_app.command("cancel")
@handle_errors
def batch_cancel(job_id: str) -> None:
    """Cancel a batch job; it writes no results."""
    from loraflow import Completion

    with prefect():
        done = Completion.cancel_batch_completion(job_id).success
    out.print(f"cancelling {job_id}" if done else f"{job_id} has already ended")


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5005,
) -> None:
    """Serve LLM Engine's REST API and OpenAI's (/v1/completions, /v1/chat/completions)."""
    from loraflow.server import serve as run

    with prefect():
        run(
            host,
            port,
            announce=lambda text: out.print(text, highlight=False, markup=False, soft_wrap=True),
        )
