"""The model a fine-tune trains: precision, the response loss, and the speed levers applied.

``build`` loads the base, wraps it in LoRA, and applies what ``TrainingConfig`` asks for on
this device (``loraflow.training.speed``, ``loraflow.training.fused_lora``): on a CPU bf16
base weights, inputs cast once, the sparse dropout, fp32 attention, the chunked loss and a
1024-token budget; on a GPU packed batches (FlashAttention 2 when installed, else SDPA),
Liger's kernels when installed, and torch.compile; wherever layers are not compiled, the fused
LoRA branch; everywhere, right-padded batches without a padding mask. ``Levers`` records
what was applied, for the run's log and for tests.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from loraflow.models.zoo import ModelSpec
from loraflow.training import fused_lora, speed
from loraflow.training.data import IGNORE
from loraflow.training_settings import TrainingConfig


def device_dtype(spec: ModelSpec) -> tuple[Any, str]:
    """Load dtype of the base and accelerate's mixed-precision mode: bf16 where supported.

    On a GPU with bf16 the base is loaded in bf16. On a CPU with native bf16 (AVX-512 BF16 /
    AMX) it is loaded in fp32 and trained under bf16 autocast (1.75x faster than fp32 for
    SmolLM2-135M on this project's 2-core machine, at the same loss); the ``bf16_weights``
    lever then stores the frozen linear weights in bf16.
    """
    cuda = torch.cuda.is_available()
    if spec.dtype == "auto":
        if cuda:
            return (
                (torch.bfloat16, "bf16")
                if torch.cuda.is_bf16_supported()
                else (torch.float16, "fp16")
            )
        return torch.float32, "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
    dtype = getattr(torch, spec.dtype)
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(spec.dtype, "no") if cuda else "no"
    return dtype, mixed


def accelerator_for(factory: Any, mixed: str) -> Any:
    """An Accelerator with ``mixed`` precision, even if this process trained before with another.

    accelerate keeps precision in a process-wide singleton and refuses a second, different one;
    a process that runs several fine-tunes (Python imports of the flow) needs each its own.
    Only the precision state is reset: the distributed process group is kept.
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed)) != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    # without CUDA, several processes are CPU processes on gloo (accelerate needs telling)
    return factory(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass
class Levers:
    """What ``build`` applied; ``str()`` is the line the run logs."""

    bf16_weights: int = 0  # linear layers whose frozen weight is stored in bf16
    cast_once: int = 0  # LoRA layers whose input is cast to the autocast dtype once
    fast_dropout: int = 0  # LoRA dropouts replaced by the sparse one
    fused_lora: int = 0  # LoRA layers whose dropout, lora_A, lora_B and add are one node
    shared: bool = False  # ... sharing one draw per input
    max_batch_tokens: int | None = None
    packed: bool = False  # padding-free batches, one row of concatenated examples
    attention: str = "sdpa"
    liger: bool = False
    chunked_loss: bool = False
    causal_only: bool = False  # right-padded batches without a padding mask
    reused_memory: bool = False
    compiled_layers: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def loss(self) -> str:
        """The ``ResponseLoss`` kind these levers ask for."""
        return "liger" if self.liger else "chunked" if self.chunked_loss else "plain"

    def __str__(self) -> str:
        on = [f"attention {self.attention}"]
        on += [f"bf16 base weights ({self.bf16_weights} layers)"] if self.bf16_weights else []
        on += [f"inputs cast once ({self.cast_once} layers)"] if self.cast_once else []
        kind = "shared sparse dropout" if self.shared else "sparse dropout"
        on += [f"{kind} ({self.fast_dropout})"] if self.fast_dropout else []
        on += [f"fused LoRA ({self.fused_lora})"] if self.fused_lora else []
        on += [f"token budget {self.max_batch_tokens}"] if self.max_batch_tokens else []
        on += ["packed batches"] if self.packed else []
        on += ["Liger kernels"] if self.liger else []
        on += ["causal attention only"] if self.causal_only else []
        on += ["chunked cross-entropy"] if self.chunked_loss else []
        on += ["reused memory"] if self.reused_memory else []
        on += [f"compiled ({self.compiled_layers} layers)"] if self.compiled_layers else []
        off = f"; not used: {', '.join(self.skipped)}" if self.skipped else ""
        return "speed: " + ", ".join(on) + off


def build(
    model_dir: Any, dtype: Any, lora: dict[str, Any], mixed: str, config: TrainingConfig
) -> tuple[Any, Levers]:
    """The peft model to train (base loaded in ``dtype``, trained in ``mixed`` precision: see
    ``device_dtype``), with this device's levers applied."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    levers = Levers(packed=config.wants_packing(cuda))
    if cuda and _installed("flash_attn"):
        levers.attention = "flash_attention_2"
    elif mixed == "bf16" and config.wants_fp32_attention(cuda):
        levers.attention = speed.fp32_sdpa()
    elif cuda:
        levers.skipped.append("FlashAttention 2 (flash-attn is not installed)")
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=levers.attention
    )
    if cuda and config.liger:
        if _installed("liger_kernel"):
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(
                model=base, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                fused_linear_cross_entropy=False,
            )  # fmt: skip
            levers.liger = True
        else:
            levers.skipped.append("Liger kernels (liger-kernel is not installed)")
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **lora))
    if config.bf16_weights and mixed == "bf16":
        levers.bf16_weights = speed.bf16_base(model)
    if config.cast_once and mixed in ("bf16", "fp16"):
        levers.cast_once = speed.cast_once(model)
    if config.wants_compile(cuda):
        levers.compiled_layers = speed.compile_layers(model)  # compiled RNG is fused already
    else:
        if config.fast_dropout and not cuda:  # a GPU's own dropout kernel is fast
            levers.fast_dropout = speed.fast_dropout(model, config.share_dropout)
            levers.shared = config.share_dropout
        if config.fused_lora:
            levers.fused_lora = fused_lora.fuse_lora(model)
    levers.chunked_loss = config.chunked_loss and not levers.liger
    levers.causal_only = config.causal_only
    levers.max_batch_tokens = config.token_budget(cuda)
    return model, levers


class ResponseLoss(torch.nn.Module):
    """A peft model whose forward is the loss, so accelerate (and DDP) wrap one module.

    Returns the summed cross-entropy over label tokens and their count. Logits are computed
    only where a label is predicted: prompt and padding positions never reach the
    vocabulary-sized output layer. ``loss`` picks how: ``"plain"`` (the output layer, then
    cross-entropy), ``"chunked"`` (``speed.ChunkedCrossEntropy``) or ``"liger"`` (Liger's
    fused kernel; neither keeps all logits). ``position_ids`` marks a packed row: positions
    restart at each example, and the model's attention keeps examples apart. ``causal_only``:
    a right-padded batch runs without its padding mask (``speed.right_padded``), so attention
    runs its causal kernel; the loss and gradients are the masked ones.
    """

    CHUNK = 512  # label rows per chunk: 512 x 49152 fp32 logits are 100 MB

    def __init__(self, lm: Any, loss: str = "plain", causal_only: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.loss = loss
        self.causal_only = causal_only
        self.head_weight = speed.HeadWeight()
        self.logits = speed.LogitBuffers()

    def forward(
        self, input_ids: Any, attention_mask: Any, labels: Any, position_ids: Any = None
    ) -> tuple[Any, Any]:
        causal = self.lm.get_base_model()
        if (
            self.causal_only
            and attention_mask is not None
            and position_ids is None
            and speed.right_padded(attention_mask)
        ):
            attention_mask = None
        hidden = causal.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        target = labels[:, 1:]
        keep = target != IGNORE
        head = causal.get_output_embeddings()
        rows = hidden[:, :-1][keep]
        if self.loss == "liger":
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            loss = liger_fused_linear_cross_entropy(
                rows, head.weight, target[keep], reduction="sum"
            )
            return loss, keep.sum()
        if self.loss == "chunked" and head.bias is None:
            dtype = speed.autocast_dtype(rows.device.type)
            weight = self.head_weight(head.weight, dtype or head.weight.dtype)
            loss = speed.ChunkedCrossEntropy.apply(
                rows, weight, target[keep], self.CHUNK, self.logits
            )
            return loss, keep.sum()
        logits = head(rows).float()
        return F.cross_entropy(logits, target[keep], reduction="sum"), keep.sum()
