"""One prompt, one greedy answer: the SDK, the llm plugin, distilabel and aiXplain's run agree
(on a fine-tune, by its family@alias name, so the adapter is on every path)."""

from __future__ import annotations

import llm

from loraflow import Completion
from loraflow.integrations.aixplain import LLM
from loraflow.integrations.distilabel import LoraflowLLM

PROMPT = "Where is my order?"


def test_every_client_gives_the_same_greedy_text(tuned: str) -> None:
    sdk = Completion.create(tuned, PROMPT, max_new_tokens=12, temperature=0.0).output.text
    assert sdk.strip() and len(set(sdk)) > 2  # real text, not one repeated character

    plugin = llm.get_model(tuned).prompt(PROMPT, temperature=0.0, max_tokens=12).text()

    distilabel = LoraflowLLM(model=tuned)
    distilabel.load()
    chat = [{"role": "user", "content": PROMPT}]
    generated = distilabel.generate(inputs=[chat], max_new_tokens=12, temperature=0.0)

    run = LLM(tuned).run(PROMPT, temperature=0.0, max_tokens=12)

    assert plugin == generated[0]["generations"][0] == run.data == sdk
