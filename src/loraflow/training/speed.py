"""The trainer's speed levers; each is measured on its own (README, "Fine-tuning speed"):

- **bf16 base weights** where training runs under bf16 autocast: the frozen linear weights
  are stored in bf16, so autocast stops casting every weight on every use (it would cast to
  the same values: no number changes). Trainable LoRA weights, embeddings and norms keep fp32.
- **fast LoRA dropout**: a mask drawn 16 bits an element from 64-bit words (about 4x cheaper
  than ``bernoulli_`` on a CPU), each mask with peft's distribution (drop probability ``p``
  to within 2**-17), the product already in the autocast dtype lora_A would cast it to.
  Optionally (``share_dropout``, off) modules reading the same input (q/k/v, gate/up) share
  one dropped input: one draw, one product, one saved activation; it gives up the masks'
  independence (on the tiny model, mean eval loss over 5 seeds 0.4 % above peft's dropout,
  against 0.1 % for independent fast masks).
- **token budget**: a batch whose padded size exceeds ``max_batch_tokens`` runs as several
  micro-batches of the same step (the loss is summed over label tokens and divided once, so
  the step is the same) - peak memory follows the budget, not the longest example.
- **torch.compile** of each decoder layer (one graph shared by all, sizes dynamic).

``loraflow.settings.TrainingConfig`` switches each; its ``plain()`` turns all off, the path
the loss-curve test compares with.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch


# -- bf16 base weights -------------------------------------------------------------------------
def bf16_base(model: Any) -> int:
    """Store the frozen weights of the LoRA-wrapped linear layers in bf16; returns how many.

    Embeddings, norms and the output layer keep their precision, so the residual stream (and
    the loss) are computed as before; only weights autocast would cast anyway change storage.
    """
    count = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, torch.nn.Linear) and base.weight.dtype == torch.float32:
            base.weight.data = base.weight.data.to(torch.bfloat16)
            if base.bias is not None:
                base.bias.data = base.bias.data.to(torch.bfloat16)
            count += 1
    return count


# -- fast dropout -----------------------------------------------------------------------------
class _LastInput:
    """The input most recently dropped out, and its result, shared by the modules of a model."""

    def __init__(self) -> None:
        self.key: Any = None
        self.out: Any = None


class FastDropout(torch.nn.Module):
    """A drop-in for peft's ``lora_dropout`` module with the cheaper draw. Given a shared
    ``last``, modules handed the same input tensor get the same dropped tensor (one draw, one
    product, one saved activation); without one, every call draws its own mask."""

    def __init__(self, p: float, last: _LastInput | None = None) -> None:
        super().__init__()
        self.p = p
        self.last = last
        dropped = round(p * 65536)  # p to 16 bits
        self.threshold = dropped - 32768  # an int16 lane below this is dropped
        self.scale = 1.0 / (1.0 - dropped / 65536)

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0:
            return x
        last = self.last
        if last is not None and last.key is not None and last.key() is x:
            return last.out
        out = x * keep_mask(x, self.threshold, self.scale)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # lora_A would cast it; once is enough
            out = out.to(torch.get_autocast_dtype(device))
        if last is not None:
            last.key, last.out = weakref.ref(x), out
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", shared" if self.last is not None else "")


def keep_mask(x: Any, threshold: int, scale: float) -> Any:
    """A dropout mask shaped like ``x``: ``scale`` where kept, 0 where dropped.

    Four int16 lanes come from each full-range 64-bit word of torch's generator (seeded as
    usual), which is about 4x cheaper than ``bernoulli_`` on a CPU.
    """
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(-(2**63), 2**63 - 1)
    keep = words.view(torch.int16)[:n].view(x.shape) >= threshold
    return keep.to(x.dtype).mul_(scale)


def fast_dropout(model: Any, share: bool) -> int:
    """Replace every LoRA dropout of ``model`` with the fast one (``share``: modules reading
    one input share its draw); returns how many."""
    last, count = (_LastInput() if share else None), 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                drops[name] = FastDropout(drop.p, last)
                count += 1
    return count


# -- token budget ------------------------------------------------------------------------------
def split_by_tokens(lengths: list[int], budget: int | None) -> list[list[int]]:
    """Positions of ``lengths`` in micro-batches whose rows x longest length fit ``budget``.

    The rows are taken longest first, so each micro-batch pads little; a row longer than the
    budget gets a micro-batch of its own. None: one micro-batch of all.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if budget is None:
        return [order]
    parts: list[list[int]] = []
    for i in order:
        if parts and lengths[parts[-1][0]] * (len(parts[-1]) + 1) <= budget:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


# -- compile -----------------------------------------------------------------------------------
def compile_layers(model: Any) -> int:
    """torch.compile each decoder layer in place (regional compilation: the layers share one
    graph, lengths are dynamic, so neither depth nor a new batch length recompiles)."""
    layers = getattr(model.get_base_model().get_decoder(), "layers", [])
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
