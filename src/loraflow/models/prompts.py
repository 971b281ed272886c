"""Prompts as a base model sees them: the one place a prompt or a chat becomes token ids and
is checked against the context window, whichever backend then generates (the in-process
engine or vLLM), so a prompt is templated the same way everywhere, as in training."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loraflow.errors import InvalidRequestError, NotFoundError
from loraflow.models.zoo import ModelSpec


class Prompts:
    """Encodes prompts for one base model with its tokenizer and chat template."""

    def __init__(self, spec: ModelSpec, tokenizer: Any, context: int) -> None:
        self.base = spec.name
        self.tokenizer = tokenizer
        self.context = context
        self.use_chat = spec.formats_chat(tokenizer)

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> Prompts:
        """From a prepared model directory: its tokenizer and context window, no weights."""
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(path)
        return cls(spec, AutoTokenizer.from_pretrained(path), context_window(config))

    def encode(
        self,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        *,
        raw: bool = False,
    ) -> list[int]:
        """Prompt token ids.

        Chat models see a prompt as one user turn, formatted by their chat template exactly
        as in training; ``raw`` sends the prompt text as it is. ``messages`` (system, user,
        assistant turns) always go through the template.
        """
        if messages is not None:
            if not self.use_chat:
                raise InvalidRequestError(
                    f"messages: {self.base} has no chat template; send a prompt instead"
                )
            return _ids(
                self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True
                )
            )
        if prompt is None:
            raise InvalidRequestError("prompt: send a prompt or messages")
        if self.use_chat and not raw:
            return self.encode(messages=[{"role": "user", "content": prompt}])
        return list(self.tokenizer(prompt)["input_ids"])

    def check_fits(self, size: int, budget: int, field: str = "prompt") -> None:
        """Raise InvalidRequestError unless ``size`` prompt tokens and ``budget`` new ones fit
        the context window."""
        if size >= self.context:
            raise InvalidRequestError(
                f"{field}: {size} tokens do not fit the context window of {self.context} "
                f"tokens of {self.base}; shorten it"
            )
        if size + budget > self.context:
            raise InvalidRequestError(
                f"max_new_tokens: {budget} new tokens after a {size}-token prompt exceed the "
                f"context window of {self.context}; ask for at most {self.context - size}"
            )


class PromptedBackend:
    """What every serving backend does alike, before it generates: encode with its base
    model's ``Prompts``, and check a request (context window, adapter loaded)."""

    base: str
    prompts: Prompts
    adapters: Mapping[str, Any]

    @property
    def context(self) -> int:
        """The base model's context window, in tokens."""
        return self.prompts.context

    @property
    def use_chat(self) -> bool:
        """Whether prompts go through the chat template."""
        return self.prompts.use_chat

    def encode(
        self,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        *,
        raw: bool = False,
    ) -> list[int]:
        """Prompt token ids (``Prompts.encode``)."""
        return self.prompts.encode(prompt, messages, raw=raw)

    def check(self, request: Any, field: str = "prompt") -> None:
        """Raise InvalidRequestError / NotFoundError if ``request`` cannot run here."""
        self.prompts.check_fits(len(request.prompt_ids), request.sampling.max_new_tokens, field)
        if request.adapter is not None and request.adapter not in self.adapters:
            raise NotFoundError(f"adapter {request.adapter!r} is not loaded on {self.base}")


def context_window(config: Any) -> int:
    """A model config's context window, in tokens."""
    return int(getattr(config, "max_position_embeddings", 2048))


def _ids(value: Any) -> list[int]:
    return list(value["input_ids"] if hasattr(value, "keys") else value)
