"""The published clients, unchanged, against a real server: LLM Engine's and OpenAI's."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from loraflow import Completion as SdkCompletion
from tests.helpers import SUPPORT_CSV, in_home, tiny_fine_tune, write
from tests.server.conftest import API_KEY

pytestmark = pytest.mark.usefixtures("prefect_harness", "llmengine_env", "module_home")
MODEL = "tiny-llama-test"
PROMPT = "How do I reset my password?"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-home")


@pytest.fixture
def module_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One loraflow home for the module, so one fine-tune serves every test."""
    from loraflow.settings import reset

    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    reset()


@pytest.fixture(scope="module")
def tuned(home: Path, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fine-tune of the tiny model: unlike the bare base, its greedy answers vary.

    The seed is one whose adapter answers in text: on about 1 seed in 3 the tiny model answers
    in stray bytes (measured over 6 seeds, the same with peft's dropout and loraflow's), and
    text without two visible characters in a row leaves nothing to test stop sequences with.
    """
    with in_home(home):
        return tiny_fine_tune(tmp_path_factory.mktemp("data"), "served", seed=3).fine_tuned_model


def test_llmengine_files(tmp_path: Path) -> None:
    from llmengine import File
    from llmengine.errors import BadRequestError, NotFoundError

    path = write(tmp_path, "train.csv", SUPPORT_CSV.read_text())
    with path.open("rb") as f:
        file_id = File.upload(f).id
    info = File.get(file_id)
    assert (info.id, info.filename, info.size) == (file_id, "train.csv", path.stat().st_size)
    assert file_id in [f.id for f in File.list().files]
    assert File.download(file_id).content == path.read_text()
    assert File.delete(file_id).deleted is True
    with pytest.raises(NotFoundError):
        File.get(file_id)
    bad = write(tmp_path, "bad.csv", "prompt,response\nhi,\n")
    with bad.open("rb") as f, pytest.raises(BadRequestError, match="response"):
        File.upload(f)


def test_llmengine_fine_tunes_without_a_worker(tmp_path: Path) -> None:
    from llmengine import File, FineTune
    from llmengine.errors import BadRequestError, NotFoundError

    from deployments.build import build

    for deployment in build():  # registered; no worker, so jobs stay PENDING
        deployment.apply()
    with write(tmp_path, "train.csv", SUPPORT_CSV.read_text()).open("rb") as f:
        file_id = File.upload(f).id
    job = FineTune.create(MODEL, file_id, hyperparameters={"epochs": "1"}, suffix="http")
    got = FineTune.get(job.id)
    assert got.status == "PENDING" and got.fine_tuned_model.startswith(f"{MODEL}.http.")
    assert job.id in [j.id for j in FineTune.list().jobs]
    assert FineTune.cancel(job.id).success is True
    assert FineTune.get(job.id).status == "CANCELLED"
    events = FineTune.get_events(job.id).events
    assert events and events[-1].message.startswith("status: CANCELLED")
    with pytest.raises(BadRequestError, match="epochs"):
        FineTune.create(MODEL, file_id, hyperparameters={"epochs": 99})
    with pytest.raises(NotFoundError):
        FineTune.get("ft-" + "0" * 20)


def test_llmengine_models(tmp_path: Path) -> None:
    from llmengine import Model
    from llmengine.errors import NotFoundError, UnknownError

    name = tiny_fine_tune(tmp_path, "http").fine_tuned_model
    got = Model.get(name)
    assert (got.name, got.model_name, got.status) == (name, MODEL, "READY")
    names = [m.name for m in Model.list().model_endpoints]
    assert MODEL in names and name in names
    urls = Model.download(name).urls
    with urllib.request.urlopen(urls["adapter_config.json"]) as response:
        assert b"LORA" in response.read()
    with pytest.raises(Exception, match="base model"):
        Model.delete(MODEL)
    assert Model.delete(name).deleted is True
    with pytest.raises(NotFoundError):
        Model.get(name)
    with pytest.raises((NotFoundError, UnknownError)):
        Model.download(name)


def test_llmengine_completions_sync_stream_and_async_agree(tuned: str) -> None:
    from llmengine import Completion

    kwargs: dict[str, Any] = {
        "max_new_tokens": 10,
        "temperature": 0.0,
        "return_token_log_probs": True,
    }
    sync = Completion.create(tuned, PROMPT, **kwargs)
    sdk = SdkCompletion.create(tuned, PROMPT, **kwargs)
    assert sync.output.text == sdk.output.text
    assert sync.output.num_completion_tokens == sdk.output.num_completion_tokens
    assert [t.log_prob for t in sync.output.tokens] == pytest.approx(
        [t.log_prob for t in sdk.output.tokens], abs=1e-5
    )
    chunks = list(Completion.create(tuned, PROMPT, stream=True, **kwargs))
    assert "".join(c.output.text for c in chunks) == sdk.output.text
    assert chunks[-1].output.finished and chunks[-1].output.num_prompt_tokens

    async def both() -> tuple[Any, list[Any]]:
        whole = await Completion.acreate(tuned, PROMPT, **kwargs)
        stream = await Completion.acreate(tuned, PROMPT, stream=True, **kwargs)
        return whole, [c async for c in stream]

    whole, async_chunks = asyncio.run(both())
    assert whole.output.text == sdk.output.text
    assert "".join(c.output.text for c in async_chunks) == sdk.output.text

    text = SdkCompletion.create(tuned, PROMPT, 24, 0).output.text
    stop = stop_in(text)
    cut = Completion.create(tuned, PROMPT, 24, 0.0, stop_sequences=[stop])
    assert cut.output.text == text[: text.index(stop)]


def stop_in(text: str) -> str:
    """Two visible characters from inside ``text``, to use as a stop sequence (not U+FFFD,
    which stands for bytes that are not text)."""
    pairs = (text[i : i + 2] for i in range(1, len(text) - 1))
    found = next((p for p in pairs if p.strip() == p and "\ufffd" not in p), None)
    assert found, f"the fixture's answer has no two visible characters in a row: {text!r}"
    return found


def test_llmengine_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmengine import Completion, File
    from llmengine.errors import NotFoundError, UnauthorizedError

    with pytest.raises(NotFoundError):
        Completion.create("no-such-model", "Hi")
    with pytest.raises(NotFoundError):
        File.get("file-" + "0" * 20)
    monkeypatch.setenv("SCALE_API_KEY", "wrong")
    with pytest.raises(UnauthorizedError):
        File.list()


def test_openai_client_completions_and_chat_agree_with_the_sdk(server: str, tuned: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key=API_KEY)
    sdk = SdkCompletion.create(tuned, PROMPT, 10, 0).output
    done = client.completions.create(model=tuned, prompt=PROMPT, max_tokens=10, temperature=0)
    assert done.choices[0].text == sdk.text
    assert done.usage.completion_tokens == sdk.num_completion_tokens
    assert done.usage.prompt_tokens == sdk.num_prompt_tokens
    streamed = client.completions.create(
        model=tuned, prompt=PROMPT, max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == sdk.text

    chat = [{"role": "user", "content": PROMPT}]
    reply = client.chat.completions.create(
        model=tuned, messages=chat, max_tokens=10, temperature=0, logprobs=True
    )
    assert reply.choices[0].message.content == sdk.text  # a prompt is one user turn
    assert len(reply.choices[0].logprobs.content) == sdk.num_completion_tokens
    parts = client.chat.completions.create(
        model=tuned, messages=chat, max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == sdk.text

    many = client.chat.completions.create(
        model=tuned, messages=chat, max_tokens=6, temperature=1.0, n=3, seed=1
    )
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.message.content for c in many.choices}) > 1
    stop = stop_in(sdk.text)
    cut = client.completions.create(
        model=tuned, prompt=PROMPT, max_tokens=10, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == sdk.text[: sdk.text.index(stop)]
    assert tuned in [m.id for m in client.models.list().data]
