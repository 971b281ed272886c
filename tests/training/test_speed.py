"""The trainer's speed levers: each keeps the numbers it promises to keep (tiny model)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from loraflow.training.data import Example, collate, pack
from loraflow.training.distributed import Distributed
from loraflow.training.fused_lora import fuse_lora
from loraflow.training.loop import Trainer
from loraflow.training.model import ResponseLoss
from loraflow.training.speed import (
    ChunkedCrossEntropy,
    FastDropout,
    HeadWeight,
    LogitBuffers,
    _LastInput,
    bf16_base,
    cast_once,
    dropped_positions,
    fast_dropout,
    fp32_sdpa,
    release_memory,
    reuse_memory,
    split_by_tokens,
)
from loraflow.training_settings import TrainingConfig
from tests.training.conftest import RecordingReporter

# the stated tolerance of the loss-curve test: the first steps' losses with every lever on
# stay within 1% of the plain path's (measured: within 0.05% on this model)
CURVE_TOLERANCE = 0.01
CURVE_STEPS = 8


def test_fast_dropout_drops_p_and_rescales() -> None:
    torch.manual_seed(0)
    drop = FastDropout(0.05).train()
    out = drop(torch.ones(2048, 512))
    n = out.numel()
    dropped = float((out == 0).float().mean())
    assert abs(dropped - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)  # five standard errors
    values = sorted(torch.unique(out).tolist())
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1 / 0.95, rel=1e-4)]
    assert float(out.mean()) == pytest.approx(1.0, abs=0.005)  # the expectation is kept


@pytest.mark.parametrize("spare", [6.0, -1.0])  # -1: one gap a round, every round short
def test_sparse_draw_is_an_iid_bernoulli_mask(spare: float) -> None:
    torch.manual_seed(0)
    n, reps, p = 12, 4000, 0.2
    masks = torch.zeros(reps, n, dtype=torch.bool)
    for r in range(reps):
        drops = dropped_positions(n, p, spare=spare)
        assert bool((drops.diff() > 0).all())  # in order, each once
        assert len(drops) == 0 or 0 <= drops[0] <= drops[-1] < n
        masks[r, drops] = True
    se = math.sqrt(p * (1 - p) / reps)
    assert (masks.float().mean(0) - p).abs().max() < 5 * se  # every position, first and last too
    both = (masks[:, :-1] & masks[:, 1:]).float().mean()  # neighbours drop independently
    assert abs(float(both) - p * p) < 5 * math.sqrt(p * p / reps)
    counts = masks.sum(1).float()  # the count of drops is Binomial(n, p)
    assert abs(float(counts.var()) - n * p * (1 - p)) < 0.15 * n * p * (1 - p)
    assert len(dropped_positions(0, p)) == 0


def test_sparse_dropout_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 48, requires_grad=True)
    out = FastDropout(0.1).train()(x)
    kept = out != 0
    assert torch.equal(out, torch.where(kept, x * (1 / 0.9), 0))
    out.backward(torch.full_like(out, 2.0))
    assert torch.allclose(x.grad, torch.where(kept, 2 / 0.9, 0.0))
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the product is in bf16 for lora_A
        out = FastDropout(0.1).train()(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.equal(x.grad != 0, out != 0)


def test_masks_are_independent_unless_shared() -> None:
    x, y = torch.randn(64, 32), torch.randn(64, 32)
    q, k = FastDropout(0.1).train(), FastDropout(0.1).train()
    assert not torch.equal(q(x) == 0, k(x) == 0)  # by default each module draws its own
    last = _LastInput()
    q, k = FastDropout(0.1, last).train(), FastDropout(0.1, last).train()
    assert k(x) is q(x)  # shared: q/k/v read the same hidden states, one draw, one product
    assert not torch.equal(q(y) == 0, q(x) == 0)  # another input, another draw
    assert q.eval()(x) is x  # no dropout outside training


def test_the_draw_follows_torch_seed() -> None:
    def mask() -> torch.Tensor:
        torch.manual_seed(7)
        return FastDropout(0.05).train()(torch.ones(100, 100)) == 0

    assert torch.equal(mask(), mask())


def test_split_by_tokens_keeps_every_row_once_within_the_budget() -> None:
    lengths = [30, 5, 12, 12, 40, 7, 100]
    parts = split_by_tokens(lengths, 64)
    assert sorted(i for p in parts for i in p) == list(range(len(lengths)))
    for part in parts:
        width = max(lengths[i] for i in part)
        assert width * len(part) <= 64 or len(part) == 1  # a row over the budget goes alone
    assert [6] in parts
    assert split_by_tokens(lengths, None) == [sorted(range(7), key=lambda i: -lengths[i])]


def test_the_token_budget_follows_the_device_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from loraflow import settings

    auto = TrainingConfig()
    assert (auto.token_budget(cuda=False), auto.token_budget(cuda=True)) == (1024, 2048)
    assert TrainingConfig(max_batch_tokens=64).token_budget(cuda=True) == 64
    assert TrainingConfig(max_batch_tokens=None).token_budget(cuda=False) is None
    monkeypatch.setenv("LORAFLOW_TRAINING__MAX_BATCH_TOKENS", "768")
    settings.reset()
    assert settings.get_settings().training.token_budget(cuda=False) == 768
    with pytest.raises(ValueError, match="max_batch_tokens"):
        TrainingConfig(max_batch_tokens=8)  # type: ignore[arg-type]


def _tiny_lm(tiny_plan, attention: str = "sdpa", dropout: float = 0.0):  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    plan = tiny_plan()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        plan.model_dir, dtype=torch.float32, attn_implementation=attention
    )
    config = LoraConfig(
        task_type="CAUSAL_LM", target_modules=plan.spec.target_modules, r=4, lora_dropout=dropout
    )
    lm = get_peft_model(base, config, autocast_adapter_dtype=True)
    for p in lm.parameters():  # LoRA B starts at zero; give the adapter a say in the loss
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return lm.eval()


def _examples() -> list[Example]:
    rows = [list(range(3, 3 + n)) for n in (9, 4, 13, 6)]
    return [Example(ids, [-100] * 2 + ids[2:]) for ids in rows]


def test_a_packed_batch_has_the_loss_of_the_padded_one(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    """The GPU path's padding-free rows: positions restart per example and attention keeps the
    examples apart (checked here on the CPU through the same transformers code)."""
    loss = ResponseLoss(_tiny_lm(tiny_plan))
    examples = _examples()
    padded, packed = collate(examples, [0, 1, 2, 3], 0), pack(examples, [0, 1, 2, 3])
    assert packed.input_ids.shape == (1, sum(len(e.input_ids) for e in examples))
    assert packed.slots == packed.real_tokens == padded.real_tokens
    with torch.no_grad():
        a, n = loss(padded.input_ids, padded.attention_mask, padded.labels)
        b, m = loss(packed.input_ids, None, packed.labels, packed.position_ids)
    assert int(n) == int(m) == padded.label_tokens == packed.label_tokens
    assert float(b) == pytest.approx(float(a), rel=1e-5)
    # without the positions the examples would see each other: a different loss
    with torch.no_grad():
        c, _ = loss(packed.input_ids, None, packed.labels)
    assert float(c) != pytest.approx(float(a), rel=1e-4)


def test_bf16_base_weights_change_no_loss_under_autocast(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    lm = _tiny_lm(tiny_plan)
    batch = collate(_examples(), [0, 1, 2, 3], 0)

    def loss() -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return float(ResponseLoss(lm)(batch.input_ids, batch.attention_mask, batch.labels)[0])

    before = loss()
    assert bf16_base(lm) == 14  # 7 projections x 2 layers
    assert loss() == before  # autocast cast these weights to the same bf16 values anyway
    assert all(p.dtype == torch.float32 for p in lm.parameters() if p.requires_grad)


def _loss_and_grads(lm, kind: str = "plain", autocast: bool = True):  # type: ignore[no-untyped-def]
    batch = collate(_examples(), [0, 1, 2, 3], 0)  # padded: the attention mask matters
    lm.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, _ = ResponseLoss(lm, loss=kind)(batch.input_ids, batch.attention_mask, batch.labels)
    loss.backward()
    return float(loss), [p.grad.clone() for p in lm.parameters() if p.requires_grad]


def test_the_chunked_cross_entropy_is_torchs_loss_and_gradient() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight, target = torch.randn(50, 16), torch.randint(0, 50, (37,))
    loss = ChunkedCrossEntropy.apply(hidden, weight, target, 8, LogitBuffers())  # 5 chunks
    (loss * 0.5).backward()
    grad, hidden.grad = hidden.grad, None
    expected = F.cross_entropy(hidden @ weight.T, target, reduction="sum")
    (expected * 0.5).backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    torch.testing.assert_close(grad, hidden.grad)


def test_the_chunked_loss_is_autocasts_loss_on_the_model(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    """Under bf16 autocast: bf16 logits, softmax and loss in fp32, as the output layer + cross-
    entropy compute them; the LoRA gradients agree to bf16's precision."""
    lm = _tiny_lm(tiny_plan)
    plain, expected = _loss_and_grads(lm, "plain")
    chunked, grads = _loss_and_grads(lm, "chunked")
    assert chunked == pytest.approx(plain, rel=1e-5)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0.02, atol=1e-4)
    head = HeadWeight()
    weight = lm.get_base_model().get_output_embeddings().weight
    assert head(weight, torch.bfloat16) is head(weight, torch.bfloat16)  # cast once
    with torch.no_grad():
        weight.mul_(2.0)  # a changed weight (it is frozen in training) is cast again
    assert torch.equal(head(weight, torch.bfloat16), weight.to(torch.bfloat16))


def test_fp32_attention_is_sdpa_computed_in_fp32(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    sdpa, fp32 = _tiny_lm(tiny_plan), _tiny_lm(tiny_plan, attention=fp32_sdpa())
    # without autocast both are fp32: the same kernel with the same padding mask
    assert _loss_and_grads(fp32, autocast=False)[0] == _loss_and_grads(sdpa, autocast=False)[0]
    # under autocast only attention differs: fp32 against bf16
    assert _loss_and_grads(fp32)[0] == pytest.approx(_loss_and_grads(sdpa)[0], rel=1e-2)


def test_right_padded_rows_run_without_a_padding_mask(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    """causal_only: a right-padded batch reaches the model without its padding mask (so
    attention runs its causal kernel, grouped-query heads uncopied) and has the masked batch's
    loss and gradients; a batch padded on the left keeps its mask."""
    lm = _tiny_lm(tiny_plan)
    seen: list[torch.Tensor | None] = []
    lm.get_base_model().get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
    )

    def run(batch, causal_only: bool):  # type: ignore[no-untyped-def]
        lm.zero_grad()
        loss, _ = ResponseLoss(lm, causal_only=causal_only)(
            batch.input_ids, batch.attention_mask, batch.labels
        )
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in lm.parameters() if p.requires_grad]

    right = collate(_examples(), [0, 1, 2, 3], 0)
    assert not bool(right.attention_mask.all())  # padded: the mask would matter
    masked, causal = run(right, False), run(right, True)
    assert seen[0] is not None and seen[1] is None
    assert causal[0] == pytest.approx(masked[0], rel=1e-5)
    assert max(_error(c, m) for c, m in zip(causal[1], masked[1], strict=True)) < 1e-5

    # the same rows padded on the left keep their mask
    shifts = [int(n) for n in (right.attention_mask == 0).sum(1)]

    def to_left(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([row.roll(k) for row, k in zip(t, shifts, strict=True)])

    left = dataclasses.replace(
        right,
        input_ids=to_left(right.input_ids),
        attention_mask=to_left(right.attention_mask),
        labels=to_left(right.labels),
    )
    seen.clear()
    kept, plain = run(left, True), run(left, False)
    assert seen[0] is not None and seen[1] is not None
    assert kept[0] == plain[0]
    assert all(torch.equal(k, p) for k, p in zip(kept[1], plain[1], strict=True))


def test_an_input_is_cast_once_for_every_layer_that_reads_it(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    lm = _tiny_lm(tiny_plan)
    before, before_fp32 = _loss_and_grads(lm)[0], _loss_and_grads(lm, autocast=False)[0]
    assert cast_once(lm) == 14  # 7 projections x 2 layers
    attention = lm.get_base_model().get_decoder().layers[0].self_attn
    seen: list[torch.Tensor] = []
    for name in ("q_proj", "k_proj", "v_proj"):
        layer = getattr(attention, name).base_layer
        layer.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    after = _loss_and_grads(lm)[0]
    assert [x.dtype for x in seen] == [torch.bfloat16] * 3
    assert seen[1] is seen[0] and seen[2] is seen[0]  # one cast for q, k and v
    assert after == pytest.approx(before, rel=1e-3)
    seen.clear()  # outside autocast nothing is cast: peft's own cast is back on
    assert _loss_and_grads(lm, autocast=False)[0] == before_fp32
    assert [x.dtype for x in seen] == [torch.float32] * 3


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def test_the_fused_lora_branch_is_peft_s_forward_and_backward(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    lm = _tiny_lm(tiny_plan)
    base = lm.get_base_model()
    before = [_loss_and_grads(lm, autocast=a) for a in (False, True)]
    batch = collate(_examples(), [0, 1, 2, 3], 0)

    def base_loss() -> float:  # the base model's: adapters disabled
        with lm.disable_adapter(), torch.no_grad():
            return float(ResponseLoss(lm)(batch.input_ids, batch.attention_mask, batch.labels)[0])

    without = base_loss()
    assert fuse_lora(lm) == 14  # 7 projections x 2 layers
    calls: list[str] = []
    mlp = base.get_decoder().layers[0].mlp.up_proj
    for kind in ("lora_A", "lora_B"):
        getattr(mlp, kind)["default"].register_forward_hook(lambda *_, k=kind: calls.append(k))
    after = [_loss_and_grads(lm, autocast=a) for a in (False, True)]
    assert calls == []  # the branch uses lora_A's and lora_B's weights, not their modules
    (loss, grads), (want, want_grads) = after[0], before[0]  # fp32: sums in another order
    assert loss == pytest.approx(want, rel=1e-6)
    assert max(_error(g, e) for g, e in zip(grads, want_grads, strict=True)) < 1e-5
    # bf16: peft rounds the product, the scaled product and the sum to bf16, the fused branch
    # only the sum; its gradients are no further from the fp32 ones than peft's are
    fused_error = max(_error(g, e) for g, e in zip(after[1][1], want_grads, strict=True))
    peft_error = max(_error(g, e) for g, e in zip(before[1][1], want_grads, strict=True))
    print(f"bf16 gradients against fp32: fused {fused_error:.2e}, peft {peft_error:.2e}")
    assert fused_error <= 1.1 * peft_error
    assert after[1][0] == pytest.approx(before[1][0], rel=1e-3)
    # disabled (or merged, or several) adapters: peft's own forward
    assert base_loss() == without != after[0][0]


@pytest.mark.parametrize("share", [False, True])
def test_the_fused_branch_drops_what_the_sparse_dropout_drops(tiny_plan, share: bool) -> None:  # type: ignore[no-untyped-def]
    """The unshared sparse dropout is drawn inside the branch: with the same seed, the same
    positions as the dropout module, so the same loss and gradients (to fp32 rounding); a
    shared draw (or peft's dropout) runs as its module before the branch."""
    lm = _tiny_lm(tiny_plan, dropout=0.3)
    assert fast_dropout(lm, share) == 14
    without = _loss_and_grads(lm, autocast=False)[0]  # eval: no dropout

    def seeded(autocast: bool) -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(11)
        return _loss_and_grads(lm.train(), autocast=autocast)  # type: ignore[no-any-return]

    want = [seeded(a) for a in (False, True)]
    assert fuse_lora(lm) == 14
    got = [seeded(a) for a in (False, True)]
    assert want[0][0] != pytest.approx(without, rel=1e-5)  # the dropout did drop
    assert got[0][0] == pytest.approx(want[0][0], rel=1e-6)
    assert max(_error(g, e) for g, e in zip(got[0][1], want[0][1], strict=True)) < 1e-5
    assert got[1][0] == pytest.approx(want[1][0], rel=1e-2)  # bf16 autocast
    assert max(_error(g, e) for g, e in zip(got[1][1], want[0][1], strict=True)) < 0.05
    torch.manual_seed(12)  # another seed, other positions
    assert _loss_and_grads(lm, autocast=False)[0] != pytest.approx(got[0][0], rel=1e-6)


def _curve(tiny_plan, out: str, config: TrainingConfig, **hyper: object) -> list[float]:  # type: ignore[no-untyped-def]
    plan = tiny_plan(out=out, **hyper)
    plan.checkpoints.prefix = f"fine-tunes/ft-{out}/checkpoints"  # each run from the start
    plan.training = config
    plan.distributed = Distributed(mixed_precision="bf16")  # bf16 autocast, as on this CPU
    reporter = RecordingReporter()
    trainer = Trainer(plan, reporter)
    trainer.run()
    LEVERS[out] = next(m for _, m in reporter.events if m.startswith("speed: "))
    return [values["loss"] for _, values in reporter.history]


LEVERS: dict[str, str] = {}  # each _curve run's "speed: ..." line


def test_the_levers_keep_the_loss_curve(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    plain = _curve(tiny_plan, "plain", TrainingConfig.plain(), epochs=1)
    fast = _curve(tiny_plan, "fast", TrainingConfig(max_batch_tokens=64), epochs=1)
    shared = _curve(tiny_plan, "shared", TrainingConfig(share_dropout=True), epochs=1)
    assert LEVERS["plain"] == "speed: attention sdpa"  # every lever off
    for lever in (
        "attention loraflow_sdpa_fp32", "bf16 base weights (14 layers)",
        "inputs cast once (14 layers)", "sparse dropout (14)", "fused LoRA (14)",
        "token budget 64", "causal attention only",
        "chunked cross-entropy", "reused memory",
    ):  # fmt: skip
        assert lever in LEVERS["fast"]
    for curve in (fast, shared):
        gaps = [
            abs(b - a) / a for a, b in zip(plain[:CURVE_STEPS], curve[:CURVE_STEPS], strict=True)
        ]
        print(f"largest relative gap over the first {CURVE_STEPS} steps: {max(gaps):.2e}")
        assert max(gaps) <= CURVE_TOLERANCE, gaps


def test_a_token_budget_leaves_each_step_as_it_was(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    """Without dropout (the one random part), micro-batches give the same steps as whole ones."""
    whole = TrainingConfig(max_batch_tokens=None)
    split = TrainingConfig(max_batch_tokens=64)  # every batch of 4 runs as two or more
    hyper = {"epochs": 1, "peft_config": {"lora_dropout": 0.0}}
    a = _curve(tiny_plan, "whole", whole, **hyper)
    b = _curve(tiny_plan, "split", split, **hyper)
    assert b == pytest.approx(a, rel=1e-4)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_reused_memory_keeps_freed_memory_until_training_ends() -> None:
    assert reuse_memory()  # this machine's C library is glibc
    try:
        before = _rss()
        block = torch.ones(6 << 20)  # 24 MB, touched: below the 32 MB mmap threshold
        del block
        kept = _rss() - before
        assert kept > 16 << 20  # freed, but kept for the next step's tensors
    finally:
        release_memory()
    assert _rss() - before < kept - (16 << 20)  # handed back when training ends
