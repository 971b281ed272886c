"""The completion engine: a base model loaded once per process, LoRA adapters attached by name.

Fine-tunes of one base share its weights; a batch may mix adapters (and the bare base).
Generation is serialised per engine with a lock; callers batch requests into ``stream``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from loraflow.engine.generation import BASE_ADAPTER, Decoder, Request, TokenEvent, eos_ids
from loraflow.errors import NotFoundError
from loraflow.models import model_revision, prepare, resolve_model
from loraflow.models.prompts import PromptedBackend, Prompts, context_window


class Engine(PromptedBackend):
    """Serves one base model and any number of its adapters."""

    def __init__(self, base: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = resolve_model(base)
        path = prepare(spec)
        self.base = spec.name
        self.revision = model_revision(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        gpu = torch.cuda.is_available()
        dtype = _dtype(spec.dtype, gpu and torch.cuda.is_bf16_supported())
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.model = (model.to("cuda") if gpu else model).eval()  # type: ignore[arg-type]
        self.prompts = Prompts(spec, self.tokenizer, context_window(model.config))
        self.adapters: dict[str, str] = {}  # model name -> peft adapter name
        self._lock = threading.Lock()
        self._lock_scheduler = threading.Lock()
        self._scheduler: Any = None

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Attach the LoRA adapter in ``adapter_dir`` under ``name`` (idempotent)."""
        from peft import PeftModel

        with self._lock:
            if name in self.adapters:
                return
            key = _adapter_key(name)
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, adapter_dir, adapter_name=key)
            else:
                self.model.load_adapter(adapter_dir, adapter_name=key)
            self.model.eval()
            self.adapters[name] = key

    def remove_adapter(self, name: str) -> None:
        """Detach an adapter and free its weights (a no-op for one not loaded)."""
        with self._lock:
            if name not in self.adapters:
                return
            key = self.adapters.pop(name)
            if self.adapters:
                if key in self.model.active_adapters:
                    self.model.set_adapter(next(iter(self.adapters.values())))
                self.model.delete_adapter(key)
            else:
                self.model = self.model.unload()

    def stream(self, requests: list[Request], timeout: float | None = None) -> Iterator[TokenEvent]:
        """Generate for ``requests`` as one batch of their own, yielding token events.

        Every request is checked before any runs; ``timeout`` (seconds) ends the requests
        still going with finish reason "timeout". See ``submit`` to share batches.
        """
        for r in requests:
            self.check(r)
        deadline = None if timeout is None else time.monotonic() + timeout
        yield from self.generate_batch([replace(r, deadline=deadline) for r in requests])

    def submit(self, requests: list[Request], timeout: float | None = None) -> Iterator[TokenEvent]:
        """Like ``stream``, but batched with what other callers submit at the same time.

        Checks every request first (raising before anything is queued); closing the
        iterator early cancels the requests.
        """
        for r in requests:
            self.check(r)
        return self._scheduler_now().submit(requests, timeout)

    def submit_to(
        self, requests: list[Request], put: Any, timeout: float | None = None
    ) -> threading.Event:
        """Like ``submit``, but the scheduler hands each event to ``put`` (then None at the
        end); returns the event that cancels them (``Scheduler.submit_to``)."""
        for r in requests:
            self.check(r)
        return self._scheduler_now().submit_to(requests, put, timeout)

    def _scheduler_now(self) -> Any:
        with self._lock_scheduler:
            if self._scheduler is None:
                from loraflow.engine.scheduler import Scheduler

                self._scheduler = Scheduler(self)
        return self._scheduler

    def generate_batch(self, requests: list[Request]) -> Iterator[TokenEvent]:
        """Run checked requests as one batch until every one has finished."""
        decoder = self.decoder()
        yield from decoder.admit(list(enumerate(requests)))
        while decoder.rows:
            yield from decoder.step()

    def decoder(self) -> Decoder:
        """A new continuous batch on this engine's model (see ``Decoder``)."""
        device = next(self.model.parameters()).device
        return Decoder(self._forward, self.tokenizer, device, eos_ids(self.model, self.tokenizer))

    def _forward(self, requests: list[Request], **inputs: Any) -> Any:
        """One forward pass for these rows, with their adapters; the model is held meanwhile."""
        with self._lock, self._adapters_for(requests) as names:
            extra = {} if names is None else {"adapter_names": names}
            return self.model(**inputs, **extra)

    @contextmanager
    def scoring(self, adapter: str | None) -> Iterator[Any]:
        """The model with ``adapter`` (None: the bare base) selected, held for exclusive use."""
        if adapter is not None and adapter not in self.adapters:
            raise NotFoundError(f"adapter {adapter!r} is not loaded on {self.base}")
        with self._lock, self._adapters_for([Request([], adapter)]):
            yield self.model

    @contextmanager
    def _adapters_for(self, requests: list[Request]) -> Iterator[list[str] | None]:
        """Select adapters: one for the batch when it shares one, else per-row names.

        A per-row mix costs peft a pass per adapter in each layer; a shared one costs nothing.
        """
        wanted = {r.adapter for r in requests}
        if not self.adapters:
            yield None
        elif len(wanted) > 1:
            yield [self.adapters[r.adapter] if r.adapter else BASE_ADAPTER for r in requests]
        elif (only := wanted.pop()) is None:
            with self.model.disable_adapter():
                yield None
        else:
            self.model.set_adapter(self.adapters[only])
            yield None


def _adapter_key(name: str) -> str:
    """A peft adapter name for a model name (peft names cannot hold dots)."""
    return "lora_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _dtype(setting: str, bf16: bool) -> Any:
    import torch

    if setting == "auto":
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, setting)


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child (a multiprocessing pool: distilabel's pipeline steps) has none of its
    parent's scheduler threads: it loads engines of its own on first use instead of waiting
    on the parent's."""
    global _ENGINES_LOCK
    _ENGINES.clear()
    _ENGINES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def get_engine(base: str) -> Engine:
    """The process-wide engine of a base model, loaded once, on first use."""
    with _ENGINES_LOCK:
        if base not in _ENGINES:
            _ENGINES[base] = Engine(base)
        return _ENGINES[base]


def resolve_served(reference: str) -> tuple[Engine, str | None]:
    """The engine and adapter name serving a model reference.

    A reference is a base model of the zoo, a fine-tuned model name, ``family@alias`` or
    ``family/version``. A fine-tune's adapter is fetched from the store and attached to its
    base's engine on first use. Raises NotFoundError for an unknown model.
    """
    from loraflow import registry

    base, record = registry.served_by(reference)
    if record is None:
        return get_engine(base), None
    name = record.fine_tuned_model
    engine = get_engine(record.base_model)
    registry.check_base_revision(record, engine.revision)
    if name not in engine.adapters:
        engine.add_adapter(name, registry.fetch_adapter(record))
    return engine, name


def unload(name: str) -> None:
    """Detach a fine-tune from every engine of this process (after it is deleted)."""
    for engine in list(_ENGINES.values()):
        engine.remove_adapter(name)
