"""loraflow's llm plugin, driven by the published llm: its CLI (Click's runner) and its Python
API, sync and async, in this process and against a remote `loraflow serve`."""

from __future__ import annotations

import asyncio
import json

import llm
import pytest
from click.testing import CliRunner
from llm.cli import cli

from loraflow import Completion
from tests.with_llm.conftest import API_KEY

TINY = "tiny-llama-test"
SAMPLED = {"temperature": 1.0, "max_tokens": 8, "seed": 7}  # varied text, same for a seed


def sdk(
    model: str, prompt: str | None = None, messages: list[dict[str, str]] | None = None, **o: object
) -> str:
    o = {**SAMPLED, **o}
    return Completion.create(
        model,
        prompt,
        messages=messages,
        max_new_tokens=o["max_tokens"],
        temperature=o["temperature"],
        seed=o["seed"],
        stop_sequences=o.get("stop"),
    ).output.text


def run(*args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout  # progress bars of a first model load go to stderr


def options(**o: object) -> list[str]:
    return [x for k, v in {**SAMPLED, **o}.items() for x in ("-o", k, str(v))]


def test_llm_lists_every_served_model_and_answers_by_any_name(tuned: str) -> None:
    from loraflow.sdk import Model

    listed = run("models")
    names = [m.name for m in Model.list().model_endpoints]
    for name in [*names, tuned]:
        assert f"loraflow/{name} " in listed or f"aliases: {name}" in listed or name in listed
    assert f"LoraflowModel: loraflow/{tuned} (aliases: {tuned})" in listed
    fine_tuned = next(m.name for m in Model.list().model_endpoints if m.fine_tuned)
    for name in (tuned, fine_tuned, f"loraflow/{fine_tuned}"):
        assert run("-m", name, *options(), "Where is my order?").rstrip("\n") == sdk(
            tuned, "Where is my order?"
        )


def test_cli_prompt_stream_options_usage_and_chat() -> None:
    assert run("-m", TINY, *options(), "Hello").rstrip("\n") == sdk(TINY, "Hello")
    assert run("-m", TINY, "--no-stream", *options(), "Hello").rstrip("\n") == sdk(TINY, "Hello")
    stopped = sdk(TINY, "Hello", max_tokens=8)
    stop = stopped[3:5]
    assert run("-m", TINY, *options(stop=stop), "Hello").rstrip("\n") == sdk(
        TINY, "Hello", stop=[stop]
    )
    logged = json.loads(run("logs", "-n", "1", "--json"))[0]
    assert logged["model"] == f"loraflow/{TINY}" and logged["output_tokens"] <= 8
    assert logged["input_tokens"] > 0 and logged["options_json"]["seed"] == 7

    system = run("-m", TINY, "-s", "Be brief.", *options(), "Hello").rstrip("\n")
    assert system == sdk(
        TINY,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    )

    # llm chat: the second turn is sent with the first as history
    chat = run("chat", "-m", TINY, *options(), input="Hi\nAnd then?\nquit\n")
    first = sdk(TINY, "Hi")
    second = sdk(
        TINY,
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And then?"},
        ],
    )
    assert first in chat and second in chat

    bad = CliRunner().invoke(cli, ["-m", TINY, "-o", "temperature", "3", "Hello"])
    assert bad.exit_code != 0 and "temperature" in bad.output


def test_python_api_sync_async_conversations_and_usage() -> None:
    model = llm.get_model(TINY)
    response = model.prompt("Hello", **SAMPLED)
    assert response.text() == sdk(TINY, "Hello")
    usage = response.usage()
    assert usage.output is not None and usage.output <= 8 and usage.input and usage.input > 0

    conversation = model.conversation()
    first = conversation.prompt("Hi", **SAMPLED).text()
    second = conversation.prompt("And then?", **SAMPLED).text()
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first}]
    assert second == sdk(TINY, messages=[*history, {"role": "user", "content": "And then?"}])

    async def both() -> tuple[str, str, object]:
        amodel = llm.get_async_model(TINY)
        whole = await amodel.prompt("Hello", stream=False, **SAMPLED).text()
        streamed = amodel.prompt("Hello", **SAMPLED)
        pieces = [piece async for piece in streamed]
        return whole, "".join(pieces), await streamed.usage()

    whole, joined, ausage = asyncio.run(both())
    assert whole == joined == sdk(TINY, "Hello")
    assert ausage.output == usage.output  # type: ignore[attr-defined]

    with pytest.raises(llm.ModelError, match="max_new_tokens: 100000 new tokens"):
        model.prompt("Hello", temperature=0.5, max_tokens=100_000).text()


def test_a_remote_loraflow_serve_with_a_key_from_llm_keys(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = sdk(TINY, "Hello")
    monkeypatch.setenv("LORAFLOW_BASE_URL", server)
    from loraflow.settings import reset

    reset()
    run("keys", "set", "loraflow", "--value", API_KEY)
    assert f"loraflow/{TINY}" in run("models")
    assert run("-m", TINY, *options(), "Hello").rstrip("\n") == local
    assert run("-m", TINY, "--no-stream", *options(), "Hello").rstrip("\n") == local
    logged = json.loads(run("logs", "-n", "1", "--json"))[0]
    assert logged["output_tokens"] <= 8 and logged["input_tokens"] > 0

    async def remote() -> str:
        return await llm.get_async_model(TINY).prompt("Hello", **SAMPLED).text()

    assert asyncio.run(remote()) == local

    run("keys", "set", "loraflow", "--value", "wrong-key")
    refused = CliRunner().invoke(cli, ["-m", TINY, "Hello"])
    assert refused.exit_code != 0 and "llm keys set loraflow" in refused.output
    assert "wrong-key" not in refused.output
