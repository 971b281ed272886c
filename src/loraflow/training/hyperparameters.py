"""Fine-tuning hyperparameters: LLM Engine's names and defaults, plus loraflow's own."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loraflow.errors import InvalidRequestError
from loraflow.training.distributed import Distributed
from loraflow.types import DataSeed

LORA_KEYS = {
    "r": (int, 1, 1024),
    "lora_alpha": (float, 1e-6, 1e6),
    "lora_dropout": (float, 0.0, 0.99),
    "target_modules": (list, None, None),
    "bias": (str, None, None),
    "use_rslora": (bool, None, None),
    "use_dora": (bool, None, None),
    "init_lora_weights": (bool, None, None),
    "layers_to_transform": (list, None, None),
}
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}


class Hyperparameters(BaseModel):
    """Everything that shapes a fine-tune. Numeric strings ("0.0002", "3") are accepted."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(
        2e-3, gt=0, le=1, description="Peak learning rate; cosine decay after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    epochs: int = Field(5, ge=1, lt=20, description="Passes over the training data.")
    weight_decay: float = Field(0.001, ge=0, lt=1, description="AdamW weight decay.")
    peft_config: dict[str, Any] | None = Field(
        None, description="LoRA settings passed to peft.LoraConfig (r, lora_alpha, ...)."
    )
    max_length: int | None = Field(
        None, ge=8, description="Token limit per example; default: the base model's."
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Examples per micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches a step.")
    seed: DataSeed = Field(
        42, description="Seed of data order, LoRA init and the validation split."
    )
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate every N steps; default: at the end of each epoch."
    )
    save_every: int | None = Field(
        None, ge=1, description="Checkpoint every N steps; default: at the end of each epoch."
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Split off when no validation file is given; 0 disables."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    distributed: Distributed | None = Field(
        None,
        description="Data-parallel training under accelerate launch (processes, machines, "
        "ddp or fsdp); default: one process. batch_size is per process.",
    )

    @field_validator("peft_config")
    @classmethod
    def _check_lora(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        checked = {}
        for key, raw in value.items():
            if key not in LORA_KEYS:
                raise ValueError(
                    f"unknown LoRA parameter {key!r}; known: {', '.join(sorted(LORA_KEYS))}"
                )
            kind, low, high = LORA_KEYS[key]
            checked[key] = _lora_value(key, raw, kind, low, high)
        return checked

    def lora(self) -> dict[str, Any]:
        """The LoraConfig keyword arguments: defaults overlaid with ``peft_config``."""
        return {**LORA_DEFAULTS, **(self.peft_config or {})}


def _lora_value(key: str, raw: Any, kind: type, low: float | None, high: float | None) -> Any:
    try:
        if kind is bool and isinstance(raw, str):
            value: Any = {"true": True, "false": False}[raw.lower()]
        elif kind in (int, float):
            value = kind(raw)
            if kind is int and float(raw) != value:
                raise ValueError
        else:
            value = raw if isinstance(raw, kind) else kind(raw)
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"Invalid value received for lora parameter {key!r}: {raw!r}") from None
    if low is not None and not low <= value <= high:
        raise ValueError(
            f"Invalid value received for lora parameter {key!r}: {raw!r} (allowed {low}..{high})"
        )
    return value


def parse_hyperparameters(raw: dict[str, Any] | Hyperparameters | None) -> Hyperparameters:
    """Validate user hyperparameters; InvalidRequestError names each bad field and the fix."""
    try:
        return Hyperparameters.model_validate(raw or {})
    except ValidationError as exc:
        known = ", ".join(Hyperparameters.model_fields)
        problems = []
        for err in exc.errors():
            field = ".".join(map(str, err["loc"])) or "hyperparameters"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown hyperparameter {field!r} (known: {known})")
            else:
                problems.append(f"{field}: {err['msg']} (got {err.get('input')!r})")
        raise InvalidRequestError("invalid hyperparameters: " + "; ".join(problems)) from None
