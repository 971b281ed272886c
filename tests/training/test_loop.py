"""The training loop on the tiny model: learning, checkpoints, resume, cancellation."""

from __future__ import annotations

import pytest

from loraflow.training.loop import Trainer, TrainingCancelled
from tests.training.conftest import RecordingReporter


def losses(reporter: RecordingReporter) -> list[tuple[int, float]]:
    return [(step, values["loss"]) for step, values in reporter.history]


def test_training_lowers_the_loss_and_saves_an_adapter(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    reporter = RecordingReporter()
    result = Trainer(tiny_plan(epochs=4), reporter).run()
    history = [v for _, v in reporter.history]
    assert result.steps == len(history) == reporter.total_steps == 4 * 14  # 54 rows, batches of 4
    epochs = [sum(h["loss"] for h in history[i : i + 14]) / 14 for i in range(0, 56, 14)]
    assert epochs[-1] < epochs[0] - 0.02  # epoch means: measured 0.05-0.19 over seeds and dropouts
    assert "eval_loss" in history[13] and "eval_loss" in history[-1]
    assert all(h["pad_fraction"] < 0.2 for h in history)
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    clean = RecordingReporter()
    Trainer(tiny_plan(out="clean", save_every=5), clean).run()
    clean.history.clear()  # the same store: start the interrupted run from nothing
    plan = tiny_plan(out="crash", save_every=5)
    plan.checkpoints.prefix = "fine-tunes/ft-crash/checkpoints"

    crashed = RecordingReporter(fail_at=13)
    with pytest.raises(RuntimeError, match="killed at step 13"):
        Trainer(plan, crashed).run()
    resumed = RecordingReporter()
    result = Trainer(plan, resumed).run()
    assert result.resumed_from == 10
    assert ("info", "resumed from the checkpoint at step 10") in resumed.events

    reference = RecordingReporter()
    ref_plan = tiny_plan(out="ref", save_every=5)
    ref_plan.checkpoints.prefix = "fine-tunes/ft-ref/checkpoints"
    Trainer(ref_plan, reference).run()
    expected = dict(losses(reference))
    assert [s for s, _ in losses(resumed)] == list(range(11, 29))
    for step, loss in losses(resumed):
        assert loss == pytest.approx(expected[step], rel=1e-5, abs=1e-6)


def test_a_job_rerun_after_its_final_checkpoint_keeps_its_losses(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    plan = tiny_plan(out="done", epochs=1)
    first = Trainer(plan, RecordingReporter()).run()
    assert first.train_loss is not None and first.eval_loss is not None
    again = RecordingReporter()  # e.g. the process died after the last checkpoint
    second = Trainer(plan, again).run()
    assert second.resumed_from == first.steps and not again.history  # nothing trained again
    assert (second.train_loss, second.eval_loss) == (first.train_loss, first.eval_loss)


def test_cancel_saves_a_checkpoint_and_stops(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    plan = tiny_plan(save_every=100)
    reporter = RecordingReporter(stop_at=3)
    with pytest.raises(TrainingCancelled) as caught:
        Trainer(plan, reporter).run()
    assert caught.value.step == 3
    assert plan.checkpoints.latest().step == 3
    assert len(reporter.history) == 3


def test_one_process_can_train_twice_with_different_precisions(tiny_plan) -> None:  # type: ignore[no-untyped-def]
    fp32 = tiny_plan(out="a", epochs=1)
    Trainer(fp32, RecordingReporter()).run()
    auto = tiny_plan(out="b", epochs=1)
    auto.spec = auto.spec.model_copy(update={"dtype": "auto"})  # bf16 autocast where supported
    auto.checkpoints.prefix = "fine-tunes/ft-auto/checkpoints"
    assert Trainer(auto, RecordingReporter()).run().steps == 14
    again = tiny_plan(out="c", epochs=1)
    again.checkpoints.prefix = "fine-tunes/ft-again/checkpoints"
    assert Trainer(again, RecordingReporter()).run().steps == 14
