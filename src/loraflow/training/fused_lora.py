"""The fused LoRA add, a speed lever of the trainer (the others are in ``speed``): a LoRA
layer's update, ``scaling * lora_B(lora_A(dropout(x)))``, added to the base layer's output by
one ``addmm``, with a backward in the layout a CPU BLAS runs fastest for rank-wide matrices.
On SmolLM2-135M on a 2-core AVX2 CPU (fp32) it made a forward and backward pass 4-8 % faster;
losses and gradients are peft's to fp32 rounding (``tests/training/test_speed.py``)."""

from __future__ import annotations

import types
from typing import Any

import torch


class _LoraBAdd(torch.autograd.Function):
    """``result + scaling * (h @ weight.T)``, peft's LoRA update added to the base layer's
    output, as one ``addmm`` (one pass over the output, where peft makes the product, scales
    it and adds it in three). Backward multiplies in the layout a CPU BLAS runs fastest when one
    side is only r wide: ``grad_h = (w.T @ g.T).T``, ``grad_w = (h.T @ g).T``, the products
    autograd's ``g @ w`` and ``g.T @ h`` give (measured 2-4x faster for r = 8 against 576 and
    1536 features), the scaling applied to those r-wide results. The sums are the same, their
    order of addition may differ. It computes in ``result``'s dtype (autocast's, under it)."""

    @staticmethod
    def forward(ctx: Any, result: Any, h: Any, weight: Any, scaling: float) -> Any:
        dtype = result.dtype
        with torch.autocast(result.device.type, enabled=False):
            h2, w = h.reshape(-1, h.shape[-1]).to(dtype), weight.to(dtype)
            out = torch.addmm(result.reshape(-1, w.shape[0]), h2, w.t(), alpha=scaling)
        ctx.save_for_backward(h2, w)
        ctx.scaling, ctx.h_shape, ctx.h_dtype, ctx.w_dtype = scaling, h.shape, h.dtype, weight.dtype
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        h2, w = ctx.saved_tensors
        g = grad.reshape(-1, w.shape[0]).to(w.dtype)
        grad_h = grad_w = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[1]:
                grad_h = torch.mm(w.t(), g.t()).mul_(ctx.scaling).t()
                grad_h = grad_h.to(ctx.h_dtype).reshape(ctx.h_shape)
            if ctx.needs_input_grad[2]:
                grad_w = torch.mm(h2.t(), g).mul_(ctx.scaling).t().to(ctx.w_dtype)
        return grad, grad_h, grad_w, None


def _lora_forward(layer: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """A peft LoRA ``Linear``'s forward with ``_LoraBAdd`` for one plain LoRA adapter; every
    other case (adapters disabled or merged, several or mixed adapters, variants such as
    DoRA, a lora_B bias, extra arguments) goes to peft's own forward."""
    active = layer.active_adapters
    name = active[0] if len(active) == 1 else None
    lora_b = layer.lora_B[name] if name in layer.lora_B else None  # noqa: SIM401 (ModuleDict)
    if (
        args
        or kwargs
        or lora_b is None
        or lora_b.bias is not None
        or layer.disable_adapters
        or layer.merged
        or name in layer.lora_variant
    ):
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x)
    x = layer._cast_input_dtype(x, layer.lora_A[name].weight.dtype)
    h = layer.lora_A[name](layer.lora_dropout[name](x))
    return _LoraBAdd.apply(result, h, lora_b.weight, layer.scaling[name])


def fused_lora_add(model: Any) -> int:
    """Give every LoRA-wrapped linear layer of ``model`` ``_lora_forward``; returns how many."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear and isinstance(module.base_layer, torch.nn.Linear):
            module.forward = types.MethodType(_lora_forward, module)  # type: ignore[method-assign]
            count += 1
    return count
