"""The completion engine: a base model loaded once per process, LoRA adapters attached by name.

Fine-tunes of one base share its weights; a batch may mix adapters (and the bare base).
Generation is serialised per engine with a lock; the HTTP layer batches requests into it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from loraflow.engine.generation import Request, TokenEvent, generate
from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.models import prepare, resolve_model
from loraflow.models.zoo import load_zoo
from loraflow.settings import get_settings
from loraflow.storage import get_store


class Engine:
    """Serves one base model and any number of its adapters."""

    def __init__(self, base: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = resolve_model(base)
        path = prepare(spec)
        self.base = spec.name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
        self.model = model.eval()
        self.context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.use_chat = spec.formats_chat(self.tokenizer)
        self.adapters: set[str] = set()
        self._lock = threading.Lock()

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Attach the LoRA adapter in ``adapter_dir`` under ``name`` (idempotent)."""
        from peft import PeftModel

        with self._lock:
            if name in self.adapters:
                return
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=name)
            else:
                self.model.load_adapter(adapter_dir, adapter_name=name)
            self.model.eval()
            self.adapters.add(name)

    def encode(
        self, prompt: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> list[int]:
        """Prompt token ids: chat messages through the chat template, else the raw prompt."""
        if messages is not None:
            if not self.use_chat:
                raise InvalidRequestError(
                    f"{self.base} has no chat template: send a prompt, not messages"
                )
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        if prompt is None:
            raise InvalidRequestError("send a prompt or messages")
        return list(self.tokenizer(prompt)["input_ids"])

    def stream(self, requests: list[Request], timeout: float | None = None) -> Iterator[TokenEvent]:
        """Generate for ``requests`` as one batch, yielding token events as they come."""
        for r in requests:
            if len(r.prompt_ids) + r.sampling.max_new_tokens > self.context:
                raise InvalidRequestError(
                    f"prompt ({len(r.prompt_ids)} tokens) plus max_new_tokens "
                    f"({r.sampling.max_new_tokens}) exceeds the context window of {self.context}"
                )
            if r.adapter is not None and r.adapter not in self.adapters:
                raise NotFoundError(f"adapter {r.adapter!r} is not loaded on {self.base}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            yield from generate(
                self.model,
                self.tokenizer,
                requests,
                adapters_loaded=bool(self.adapters),
                deadline=deadline,
            )


@lru_cache(maxsize=4)
def get_engine(base: str) -> Engine:
    """The process-wide engine of a base model, loaded on first use."""
    return Engine(base)


def resolve_served(model: str) -> tuple[str, str | None]:
    """(base model, adapter name or None) for a zoo name or a fine-tuned model name.

    Loads the fine-tune's adapter into its base's engine on first use.
    """
    if model in load_zoo():
        return model, None
    if not all(c.isalnum() or c in "._-" for c in model):
        raise InvalidRequestError(f"model names use letters, digits and '._-' only: {model!r}")
    try:
        record = json.loads(get_store().get_bytes(f"models/{model}.json"))
    except NotFoundError:
        raise NotFoundError(f"The specified model could not be found: {model}") from None
    engine = get_engine(record["base_model"])
    if model not in engine.adapters:
        engine.add_adapter(model, _download_adapter(model, record["adapter_prefix"]))
    return record["base_model"], model


def _download_adapter(name: str, prefix: str) -> Path:
    store = get_store()
    target = get_settings().home / "cache" / "adapters" / name
    for info in store.list(prefix + "/"):
        store.download(info.key, target / info.key.rsplit("/", 1)[1])
    return target
