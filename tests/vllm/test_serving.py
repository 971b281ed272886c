"""Fine-tunes served by vLLM: adapters follow the registry (loaded on first use, by any
reference, least recently used unloaded, unloaded on delete, warmed before an alias moves),
and both HTTP APIs with the published clients work on the vllm backend unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from loraflow import Completion, Model
from loraflow import settings as settings_module
from tests.helpers import in_home, tiny_fine_tune
from tests.server.conftest import API_KEY, server  # noqa: F401  (the shared uvicorn server)
from tests.vllm.conftest import TINY, use_engine, use_vllm

pytestmark = pytest.mark.usefixtures("prefect_harness", "module_home")
PROMPT = "How do I reset my password?"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm-serving-home")


@pytest.fixture
def module_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One loraflow home for the module, so its fine-tunes serve every test."""
    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    settings_module.reset()


@pytest.fixture(scope="module")
def tuned(home: Path, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two fine-tunes of the tiny vLLM model (trained on the engine, as always)."""
    with in_home(home):
        data = tmp_path_factory.mktemp("data")
        return [
            tiny_fine_tune(data, suffix, rows=24, model=TINY, epochs=2).fine_tuned_model
            for suffix in ("one", "two")
        ]


def loaded(url: str) -> set[str]:
    """What the vLLM server serves now: the base and its loaded adapters."""
    return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def greedy(model: str) -> str:
    return Completion.create(model, PROMPT, max_new_tokens=16, temperature=0).output.text


def test_adapters_follow_the_registry(
    on_vllm: str, tuned: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraflow import backends, registry

    one, two = tuned
    use_engine(monkeypatch)
    expected = {name: greedy(name) for name in tuned}
    assert expected[one] != greedy(TINY)  # the adapter changes the answer: a real test
    use_vllm(monkeypatch)

    assert one not in loaded(on_vllm)
    assert greedy(one) == expected[one]  # loaded on first use, from the object store
    assert one in loaded(on_vllm)

    record = registry.read_record(one)
    registry.set_alias(record, "champion")
    family, version = record.registered_model, record.version
    for reference in (f"{family}@champion", f"{family}/{version}", f"models:/{family}/{version}"):
        assert greedy(reference) == expected[one]  # resolved by loraflow to the exact version
    assert not {m for m in loaded(on_vllm) if "@" in m or "/" in m}  # vLLM sees names only

    # one adapter at a time: the least recently used idle one goes
    monkeypatch.setenv("LORAFLOW_SERVING__VLLM_MAX_ADAPTERS", "1")
    settings_module.reset()
    assert greedy(two) == expected[two]
    assert two in loaded(on_vllm) and one not in loaded(on_vllm)
    assert greedy(one) == expected[one]  # swapped back in
    assert one in loaded(on_vllm) and two not in loaded(on_vllm)

    # a promotion warms the new champion before its alias moves; delete unloads
    backends.warm(two)
    assert two in loaded(on_vllm)
    assert Model.delete(two).deleted is True
    assert two not in loaded(on_vllm)
    got = Model.get(one)
    assert got.inference_framework == "vllm" and got.fine_tuned


def test_the_published_clients_cannot_tell_the_backends_apart(
    on_vllm: str,
    tuned: list[str],
    server: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmengine import Completion as LlmCompletion
    from openai import OpenAI

    one = tuned[0]
    monkeypatch.setenv("LLM_ENGINE_DISABLE_VERSION_CHECK", "1")
    monkeypatch.setenv("LLM_ENGINE_BASE_PATH", server + "/")
    monkeypatch.setenv("SCALE_API_KEY", API_KEY)
    openai = OpenAI(base_url=f"{server}/v1", api_key=API_KEY)
    chat = [{"role": "user", "content": PROMPT}]

    def answers() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for model in (TINY, one):
            sync = LlmCompletion.create(model, PROMPT, max_new_tokens=12, temperature=0)
            streamed = LlmCompletion.create(
                model, PROMPT, max_new_tokens=12, temperature=0, stream=True
            )
            reply = openai.chat.completions.create(
                model=model,
                messages=chat,
                max_tokens=12,
                temperature=0,  # type: ignore[arg-type]
            )
            deltas = openai.chat.completions.create(
                model=model,
                messages=chat,  # type: ignore[arg-type]
                max_tokens=12,
                temperature=0,
                stream=True,
            )
            out[model] = {
                "sync": (sync.output.text, sync.output.num_completion_tokens),
                "stream": "".join(c.output.text for c in streamed if c.output),
                "chat": (reply.choices[0].message.content, reply.usage.completion_tokens),  # type: ignore[union-attr]
                "chat_stream": "".join(
                    c.choices[0].delta.content or "" for c in deltas if c.choices
                ),
                "text": openai.completions.create(
                    model=model, prompt=PROMPT, max_tokens=12, temperature=0
                )
                .choices[0]
                .text,
            }
        return out

    on_vllm_answers = answers()
    use_engine(monkeypatch)
    assert answers() == on_vllm_answers
    use_vllm(monkeypatch)
    for model in (TINY, one):
        got = on_vllm_answers[model]
        assert got["stream"] == got["sync"][0] == got["chat"][0] == got["chat_stream"]
    assert {m.id for m in openai.models.list()} >= {TINY, one}


def test_the_complete_task_and_a_batch_job_run_on_vllm(
    on_vllm: str, tuned: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from prefect import flow

    from flows.batch_complete import batch_complete
    from loraflow.batch import BatchCompleteConfig
    from loraflow.storage import get_store
    from tasks.complete import complete

    one = tuned[0]

    @flow
    def pipeline(questions: list[str]) -> list[str]:
        return [complete(one, q, max_new_tokens=8, temperature=0).output.text for q in questions]

    questions = ["Where is my order?", "Can I return it?", "Do you ship abroad?"]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    config = BatchCompleteConfig(
        model=one, input_data_path=str(source), max_new_tokens=8, temperature=0
    )
    on_vllm_answers = pipeline(questions)
    result = batch_complete(config)
    key = f"batch-completions/{result.job_id}/results.jsonl"
    rows = [json.loads(line) for line in get_store().get_bytes(key).decode().splitlines()]
    assert [r["generations"][0] for r in rows] == on_vllm_answers
    use_engine(monkeypatch)
    assert pipeline(questions) == on_vllm_answers


def test_an_adapter_vllm_cannot_load_is_a_clear_503_and_the_rest_keeps_serving(
    on_vllm: str, tuned: list[str], tmp_path: Path
) -> None:
    from loraflow.errors import UnavailableError

    wide = tiny_fine_tune(
        tmp_path, "wide", rows=24, model=TINY, epochs=1, peft_config={"r": 32, "lora_alpha": 32}
    ).fine_tuned_model
    with pytest.raises(UnavailableError, match=r"serving\.vllm_max_lora_rank") as caught:
        greedy(wide)  # rank 32 above the server's --max-lora-rank 16
    assert caught.value.status == 503 and wide in str(caught.value)
    assert greedy(tuned[0]) and greedy(TINY)  # the others are served as before
