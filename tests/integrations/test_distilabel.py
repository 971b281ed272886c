"""loraflow as a distilabel LLM, driven by the published distilabel (its pipeline, real steps)."""

from __future__ import annotations

import asyncio
import logging
from logging.handlers import QueueHandler
from pathlib import Path

import pytest
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

from loraflow import Completion, NotFoundError
from loraflow.integrations.distilabel import LoraflowLLM, root_logging_kept

MODEL = "tiny-llama-test"
GREEDY = {"max_new_tokens": 6, "temperature": 0.0}
INSTRUCTIONS = ["Name a colour.", "Say hello.", "Count to three."]


def test_agenerate_and_generate_give_distilabels_shape() -> None:
    llm = LoraflowLLM(model=MODEL)
    llm.load()
    assert llm.model_name == MODEL
    chat = [{"role": "user", "content": "Say hello."}]
    one = asyncio.run(llm.agenerate(input=chat, num_generations=2, **GREEDY))
    expected = Completion.create(MODEL, "Say hello.", **GREEDY).output.text
    assert one["generations"] == [expected, expected]  # greedy: both alike
    stats = one["statistics"]
    assert stats["output_tokens"] == [6, 6] and len(stats["input_tokens"]) == 2
    assert stats["input_tokens"][0] > 0

    many = llm.generate(
        inputs=[[{"role": "user", "content": x}] for x in INSTRUCTIONS], num_generations=2, **GREEDY
    )
    assert [len(o["generations"]) for o in many] == [2, 2, 2]
    assert many[1]["generations"][0] == expected


def test_an_unknown_model_fails_at_load() -> None:
    with pytest.raises(NotFoundError, match="no-such-model"):
        LoraflowLLM(model="no-such-model").load()


def test_a_distilabel_pipeline_generates_twice_per_row(tmp_path: Path) -> None:
    with Pipeline(name="loraflow-online", cache_dir=tmp_path / "cache") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": x} for x in INSTRUCTIONS])
        generate = TextGeneration(
            llm=LoraflowLLM(model=MODEL, generation_kwargs=GREEDY),
            num_generations=2,
            group_generations=True,
        )
        load >> generate
    with root_logging_kept():
        distiset = pipeline.run(use_cache=False)
    assert not any(isinstance(h, QueueHandler) for h in logging.getLogger().handlers)
    rows = distiset["default"]["train"].to_list()
    assert [r["instruction"] for r in rows] == INSTRUCTIONS
    for row in rows:
        assert len(row["generation"]) == 2 and row["model_name"] == MODEL
        expected = Completion.create(MODEL, row["instruction"], **GREEDY).output.text
        assert row["generation"] == [expected, expected]
        stats = [m["statistics_text_generation_0"] for m in row["distilabel_metadata"]]
        assert [s["output_tokens"] for s in stats] == [6, 6] and stats[0]["input_tokens"] > 0
