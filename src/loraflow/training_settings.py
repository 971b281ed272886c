"""How the trainer runs, not what it learns: ``TrainingConfig``, the ``training`` section of
``loraflow.settings.Settings`` (``LORAFLOW_TRAINING__<FIELD>``). Each lever is in
``loraflow.training.speed``, its measured effect in the README's "Fine-tuning speed"."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Switch = Literal["auto", "on", "off"]  # auto: loraflow decides by the device


class TrainingConfig(BaseModel):
    """How the trainer runs, not what it learns (``loraflow.training.speed`` has each lever,
    the README its measured effect); ``LORAFLOW_TRAINING__<FIELD>`` sets each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bf16_weights: bool = Field(
        True, description="Store the frozen base's linear weights in bf16 when training in bf16."
    )
    cast_once: bool = Field(
        True, description="Under autocast, cast an input several LoRA layers read only once."
    )
    fast_dropout: bool = Field(
        True, description="On a CPU, LoRA dropout draws only the dropped positions (sparse)."
    )
    fused_lora: bool = Field(
        True,
        description="A LoRA layer's update (the sparse dropout, lora_A, lora_B, the scaled sum "
        "with the base output) as one autograd node, its products in the layouts a CPU BLAS "
        "runs fastest for rank-wide matrices (not compiled).",
    )
    share_dropout: bool = Field(
        False, description="Modules reading one input (q/k/v, gate/up) share one dropout draw."
    )
    max_batch_tokens: Annotated[int, Field(ge=16)] | Literal["auto"] | None = Field(
        "auto",
        description="Token slots (rows x padded length) one micro-batch may hold; a larger "
        "batch runs in several within the same step. auto: 1024 on a CPU, 2048 on a GPU. "
        "None: no limit.",
    )
    pack: Switch = Field("auto", description="Padding-free packed batches (auto: on a GPU only).")
    liger: bool = Field(
        True, description="Liger's kernels on a GPU, when liger-kernel is installed."
    )
    fp32_attention: Switch = Field(
        "auto", description="Attention in fp32 under bf16 autocast (auto: on a CPU only)."
    )
    causal_only: bool = Field(
        True,
        description="Right-padded batches run without a padding mask: causal attention keeps "
        "each token from the padding after it, and runs its causal kernel.",
    )
    chunked_loss: bool = Field(
        True, description="Cross-entropy by chunks, its gradient in the same pass (not Liger)."
    )
    reuse_memory: bool = Field(
        True, description="On a CPU, glibc keeps freed memory for the next step while training."
    )
    compile: Switch = Field(
        "auto", description="torch.compile each decoder layer (auto: on a GPU only)."
    )

    CPU_TOKEN_BUDGET: ClassVar[int] = 1024
    GPU_TOKEN_BUDGET: ClassVar[int] = 2048

    @classmethod
    def plain(cls) -> TrainingConfig:
        """Every lever off: fp32 base, peft's dropout, whole padded batches, eager, no Liger."""
        off = {"max_batch_tokens": None, "pack": "off", "fp32_attention": "off", "compile": "off"}
        return cls(**{name: off.get(name, False) for name in cls.model_fields})

    def token_budget(self, cuda: bool) -> int | None:
        """The micro-batch budget on this device. On a CPU, 1024 (measured on a 2-core AVX2
        CPU, SmolLM2-135M: 183-192 real tokens/s against 149-172 at 2048 and 162-169 at 512;
        a smaller micro-batch first-touches less activation memory and stays nearer the cache,
        a much smaller one pays its fixed cost more often)."""
        if self.max_batch_tokens == "auto":
            return self.GPU_TOKEN_BUDGET if cuda else self.CPU_TOKEN_BUDGET
        return self.max_batch_tokens

    def wants_packing(self, cuda: bool) -> bool:
        return self.pack == "on" or (self.pack == "auto" and cuda)

    def wants_fp32_attention(self, cuda: bool) -> bool:
        return self.fp32_attention == "on" or (self.fp32_attention == "auto" and not cuda)

    def wants_compile(self, cuda: bool) -> bool:
        return self.compile == "on" or (self.compile == "auto" and cuda)
