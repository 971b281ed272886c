"""The trainer's speed levers; each is measured on its own (README, "Fine-tuning speed"):

- **bf16 base weights** where training runs under bf16 autocast: the frozen linear weights
  are stored in bf16, so autocast stops casting every weight on every use (it would cast to
  the same values: no number changes). Trainable LoRA weights, embeddings and norms keep fp32.
- **sparse LoRA dropout**: only the dropped positions are drawn (the gaps between them,
  geometric: about ``p`` draws an element instead of one), which is exactly the distribution
  of peft's mask; autograd saves those positions instead of a mask, the product is already in
  the autocast dtype lora_A would cast it to.
  Optionally (``share_dropout``, off) modules reading the same input (q/k/v, gate/up) share
  one dropped input: one draw, one product, one saved activation; it gives up the masks'
  independence (on the tiny model, mean eval loss over 5 seeds 0.4 % above peft's dropout,
  against 0.1 % for independent fast masks).
- **token budget**: a batch whose padded size exceeds ``max_batch_tokens`` runs as several
  micro-batches of the same step (the loss is summed over label tokens and divided once, so
  the step is the same) - peak memory follows the budget, not the longest example.
- **one cast per input**: under autocast, an input several LoRA layers read (q/k/v,
  gate/up) is cast to bf16 once, and stays bf16 into the adapter.
- **fp32 attention on a CPU**: torch's CPU flash attention is faster in fp32 than in bf16 at
  fine-tuning lengths (and more precise).
- **causal attention only** for right-padded rows: causal attention already keeps every real
  token from the padding after it, so the model gets no padding mask and attention runs its
  causal kernel, grouped-query heads without copies of keys and values.
- **chunked cross-entropy**: the loss over label positions, chunk by chunk, with its gradient
  in the same pass and the frozen head weight cast once (Liger's kernel where it runs).
- **fused LoRA branch** (``loraflow.training.fused_lora``): the sparse dropout, lora_A,
  lora_B, the scaling and the sum with the base layer's output in one autograd node.
- **reused memory** on a CPU: glibc keeps freed memory for the next step's tensors instead of
  returning it to the system and page-faulting it back.
- **torch.compile** of each decoder layer (one graph shared by all, sizes dynamic).

``loraflow.settings.TrainingConfig`` switches each; its ``plain()`` turns all off, the path
the loss-curve test compares with.
"""

from __future__ import annotations

import math
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


# -- sparse dropout ---------------------------------------------------------------------------
def autocast_dtype(device: str) -> Any:
    """The dtype autocast computes in on ``device``; None where autocast is off."""
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


class _LastInput:
    """The input most recently handed over, and what was made of it, shared by the modules of
    a model: modules reading the same tensor (q/k/v, gate/up) get one result."""

    def __init__(self) -> None:
        self.key: Any = None
        self.out: Any = None

    def get(self, x: Any, make: Any) -> Any:
        """The result for ``x``: the last one if ``x`` is the last input, else ``make()``."""
        if self.key is None or self.key() is not x:
            self.key, self.out = weakref.ref(x), make()
        return self.out


class FastDropout(torch.nn.Module):
    """A drop-in for peft's ``lora_dropout`` module with the sparse draw. Given a shared
    ``last``, modules handed the same input tensor get the same dropped tensor (one draw, one
    product, one saved activation); without one, every call draws its own mask."""

    def __init__(self, p: float, last: _LastInput | None = None) -> None:
        super().__init__()
        self.p = p
        self.last = last
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0:
            return x
        if self.last is not None:
            return self.last.get(x, lambda: self._drop(x))
        return self._drop(x)

    def _drop(self, x: Any) -> Any:
        return _SparseDrop.apply(x, self.p, self.scale, autocast_dtype(x.device.type))

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", shared" if self.last is not None else "")


def dropped_positions(n: int, p: float, device: Any = None, spare: float = 6.0) -> Any:
    """The flat positions, in order, that a dropout mask of ``n`` elements drops.

    The gaps between an i.i.d. Bernoulli(``p``) mask's drops are i.i.d. Geometric(``p``), so
    drawing the gaps (inverse CDF, from torch's generator in float64) gives exactly the mask's
    distribution with about ``p * n`` draws instead of ``n``. Each round draws ``spare``
    standard deviations more gaps than it expects to need, and rounds go on until ``n``.
    """
    scale = 1.0 / math.log1p(-p)
    found = [torch.empty(0, dtype=torch.int64, device=device)]
    start = 0  # the first position not yet decided
    while start < n:
        want = (n - start) * p
        k = max(1, int(want + spare * (math.sqrt(want) + 1)))
        gaps = torch.rand(k, dtype=torch.float64, device=device).neg_().add_(1)  # in (0, 1]
        gaps = gaps.log_().mul_(scale).to(torch.int64).add_(1)  # Geometric(p) on 1, 2, ...
        positions = gaps.cumsum_(0).add_(start - 1)
        found.append(positions[: int(torch.searchsorted(positions, n))])  # sorted: a view
        start = int(positions[-1]) + 1
    return found[1] if len(found) == 2 else torch.cat(found)


class _SparseDrop(torch.autograd.Function):
    """``x * scale`` (rounded once, then cast to the autocast dtype lora_A would cast it to)
    with the dropped positions zeroed; autograd saves only those positions, and the gradient
    is the same operation on the way back."""

    @staticmethod
    def forward(ctx: Any, x: Any, p: float, scale: float, dtype: Any) -> Any:
        drops = dropped_positions(x.numel(), p, x.device)
        ctx.save_for_backward(drops)
        ctx.scale, ctx.in_dtype = scale, x.dtype
        return scale_and_zero(x, scale, dtype or x.dtype, drops)  # lora_A would cast it

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        (drops,) = ctx.saved_tensors
        return scale_and_zero(grad, ctx.scale, ctx.in_dtype, drops), None, None, None


def scale_and_zero(t: Any, scale: float, dtype: Any, drops: Any) -> Any:
    """``t * scale`` in ``dtype`` (a new contiguous tensor), zero at the flat ``drops``; a
    scale of 1 is one copy (the fused LoRA branch scales its rank-wide products instead)."""
    if scale == 1:
        out = t.to(dtype, copy=True, memory_format=torch.contiguous_format)
    else:
        out = t.mul(scale).to(dtype).contiguous()
    out.view(-1).index_fill_(0, drops, 0)
    return out


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


# -- one cast per input -----------------------------------------------------------------------
class _CastOnce:
    """Forward pre-hook of the LoRA layers: under autocast, the input is cast to the autocast
    dtype once, however many layers read it (q/k/v, gate/up), and stays in it into the
    adapter (peft would cast it back to fp32 for lora_A, which autocast then casts again)."""

    def __init__(self) -> None:
        self.last = _LastInput()

    def __call__(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        dtype = autocast_dtype(x.device.type)
        module.cast_input_dtype_enabled = dtype is None
        if dtype is None or not x.is_floating_point() or x.dtype == dtype:
            return None
        return (self.last.get(x, lambda: x.to(dtype)), *args[1:])


def cast_once(model: Any) -> int:
    """Hook every LoRA-wrapped linear layer of ``model`` with one shared ``_CastOnce``;
    returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    hook, count = _CastOnce(), 0
    for module in model.modules():
        linear = isinstance(getattr(module, "base_layer", None), torch.nn.Linear)
        if linear and isinstance(module, BaseTunerLayer):
            module.register_forward_pre_hook(hook)  # type: ignore[attr-defined]
            count += 1
    return count


# -- fp32 attention on a CPU -------------------------------------------------------------------
FP32_SDPA = "loraflow_sdpa_fp32"


def fp32_sdpa() -> str:
    """Register SDPA computed in fp32 with transformers; returns its ``attn_implementation``.

    On a CPU under bf16 autocast, torch's flash-attention kernels run faster in fp32 than in
    bf16 for the lengths fine-tuning data has (forward and backward of one 8 x 101-token
    layer: 7-8 ms against 15-16 ms; even at 359 tokens), and RoPE already left queries and
    keys in fp32, so only the values are cast. It is more precise than what it replaces.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def forward(module: Any, query: Any, key: Any, value: Any, mask: Any, **kw: Any) -> Any:
        with torch.autocast(query.device.type, enabled=False):
            return sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), mask, **kw
            )

    AttentionInterface.register(FP32_SDPA, forward)
    AttentionMaskInterface.register(FP32_SDPA, sdpa_mask)
    return FP32_SDPA


# -- causal attention only --------------------------------------------------------------------
def right_padded(mask: Any) -> bool:
    """Whether each row of ``mask`` (1: a token, 0: padding) is its tokens, then its padding.

    Such rows need no padding mask: under causal attention no token sees a later position,
    and the padding's own outputs predict no label.
    """
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


# -- chunked cross-entropy ---------------------------------------------------------------------
class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``target``, ``chunk`` rows at a
    time, its input gradient computed in the same pass (Liger's fused linear cross-entropy,
    in torch ops, for devices Liger does not run on).

    The logits of one chunk exist at a time; there is no separate log-softmax backward, no
    vocabulary-wide zero-filled gradient, and the frozen ``weight`` arrives already in the
    matmul dtype. The arithmetic is autocast's: bf16 logits, softmax and loss in fp32, the
    gradient cast to bf16 for its matmul.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: Any, weight: Any, target: Any, chunk: int, buffers: LogitBuffers
    ) -> Any:
        dtype = weight.dtype
        total = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        low, wide = buffers(min(chunk, hidden.shape[0]), weight)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                part = hidden[rows].to(dtype)
                n = part.shape[0]
                logits = wide[:n].copy_(torch.mm(part, weight.T, out=low[:n]))
                picked = target[rows].unsqueeze(1)
                # logsumexp = top + log(sums), in place: no new vocabulary-wide tensor
                top = logits.amax(dim=1, keepdim=True)
                total += (top.squeeze(1) - logits.gather(1, picked).squeeze(1)).sum()
                sums = logits.sub_(top).exp_().sum(dim=1, keepdim=True)
                total += sums.log().sum()
                if grad is not None:  # softmax - one-hot: d(sum of losses)/d(logits)
                    probs = logits.div_(sums)
                    probs.scatter_add_(1, picked, probs.new_full(picked.shape, -1.0))
                    grad[rows] = low[:n].copy_(probs) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, upstream: Any) -> Any:
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None, None, None


class LogitBuffers:
    """One chunk's logits, in the matmul dtype and in fp32, reused from chunk to chunk and call
    to call: a fresh vocabulary-wide tensor each time costs page faults (100 MB a chunk)."""

    def __init__(self) -> None:
        self.low: Any = None
        self.wide: Any = None

    def __call__(self, rows: int, weight: Any) -> tuple[Any, Any]:
        low = self.low
        if (
            low is None
            or low.shape[0] < rows
            or low.dtype != weight.dtype
            or (low.shape[1] != weight.shape[0] or low.device != weight.device)
        ):
            shape = (rows, weight.shape[0])
            self.low = torch.empty(shape, dtype=weight.dtype, device=weight.device)
            self.wide = torch.empty(shape, dtype=torch.float32, device=weight.device)
        return self.low, self.wide


class HeadWeight:
    """The frozen output layer's weight in the matmul dtype, cast once, not on every call."""

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None

    def __call__(self, weight: Any, dtype: Any) -> Any:
        key = (weight.data_ptr(), weight._version, dtype)
        if key != self.key:
            self.key, self.value = key, weight.detach().to(dtype)
        return self.value


# -- reused CPU memory -------------------------------------------------------------------------
# glibc's mallopt parameters (malloc.h)
_TRIM_THRESHOLD, _TOP_PAD, _MMAP_THRESHOLD = -1, -2, -3


def _glibc() -> Any:
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")


def reuse_memory() -> bool:
    """Have glibc keep freed memory for the next allocation instead of returning it to the
    system (heap up to 32 MB a block, no trimming below 2 GB free): on a CPU every step
    allocates and frees the same activation sizes, and memory handed back is paid for again
    in page faults (measured: 9-13 % of a step). Peak memory is unchanged. False where the
    C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return all(
        libc.mallopt(param, value)
        for param, value in (
            (_MMAP_THRESHOLD, 32 << 20),
            (_TRIM_THRESHOLD, (1 << 31) - 1),
            (_TOP_PAD, 256 << 20),
        )
    )


def release_memory() -> None:
    """After training: glibc trims again (at its default threshold) and returns what is
    free; the 32 MB mmap threshold stays."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_TRIM_THRESHOLD, 128 << 10)
        libc.mallopt(_TOP_PAD, 128 << 10)
        libc.malloc_trim(0)


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
