"""The real path: SmolLM2-135M and a fine-tuned adapter served by vLLM, answering as
loraflow's engine does (greedy, float32 on both; the agreement rate is printed). The adapter is
the session's one SmolLM2 fine-tune (``smollm2_tuned``, tests/conftest.py)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from loraflow import Completion
from loraflow import settings as settings_module
from loraflow.registry import ModelRecord
from tests.helpers import SUPPORT_CSV
from tests.vllm.conftest import use_engine, use_vllm, vllm_env

pytestmark = pytest.mark.usefixtures("prefect_harness")
BASE = "smollm2-135m-instruct"


def test_smollm2_and_its_adapter_answer_alike_on_both_backends(
    smollm2_tuned: tuple[Path, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    from loraflow import vllm

    home, outcome = smollm2_tuned
    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    settings_module.reset()
    tuned = outcome.fine_tuned_model
    rows = SUPPORT_CSV.read_text().splitlines()
    prompts = [line.split(",")[0].strip('"') for line in rows[30:38]]

    def answers() -> list[str]:
        return [
            g.generations[0]
            for model in (BASE, tuned)
            for g in Completion.generate(model, prompts, max_new_tokens=16, temperature=0)
        ]

    # loraflow starts SmolLM2's own vLLM server (float32, 1 GiB cache); it takes over a
    # minute here, most of it one process's imports on one core, so the engine's answers are
    # made meanwhile (only the backend setting differs between the two: the server reads
    # none). Asked for SmolLM2's backend while it starts, get_backend waits for it.
    vllm_env(monkeypatch)
    starting = threading.Thread(target=vllm.get_backend, args=(BASE,), name="vllm-start")
    starting.start()
    try:
        use_engine(monkeypatch)
        engine = answers()
        use_vllm(monkeypatch)
        on_vllm = answers()
        assert vllm.get_backend(BASE).server.proc is not None  # loraflow's own server
    finally:
        starting.join()
        vllm.release(BASE)  # SmolLM2's server only: the session's tiny one stays
    same = sum(a == b for a, b in zip(engine, on_vllm, strict=True))
    print(f"SmolLM2 greedy answers equal on both backends: {same}/{len(engine)}", file=sys.stderr)
    assert on_vllm[len(prompts) :] != on_vllm[: len(prompts)]  # the adapter was applied
    assert same >= len(engine) - 1  # float32 on both: at most one tie broken differently
