"""Training progress lines: cadence on a fake clock, the estimate, the epoch lines, and the
validation metrics they carry when ``fit`` trains."""

import re

import numpy as np
import pytest
import tensorflow as tf

from components.preprocessing.inmemory import synthetic_arrays
from components.preprocessing.synthetic import SyntheticConfig
from t2diff_tf.models.registry import build_model
from t2diff_tf.progress import (TrainingProgress, format_duration, format_estimate,
                                verbose_requested)
from t2diff_tf.training import TrainConfig, arrays_dataset, fit


class FakeClock:
    """Seconds that move only when told."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drive(progress, clock, epochs, steps, step_seconds, first_step_seconds=None, logs=None):
    """Calls the Keras hooks as ``fit`` does, the clock moving ``step_seconds`` per step."""
    progress.set_params({"epochs": epochs, "steps": None})
    progress.on_train_begin()
    for epoch in range(epochs):
        progress.on_epoch_begin(epoch)
        for step in range(steps):
            seconds = first_step_seconds if (step == 0 and first_step_seconds) else step_seconds
            clock.advance(seconds)
            progress.on_train_batch_end(step, {"loss": 5.0 - 0.01 * step})
        progress.on_epoch_end(epoch, dict(logs or {"loss": 4.5, "val_recall@20": 0.25}))
    progress.on_train_end()


def new_progress(clock, lines, **kwargs):
    defaults = dict(name="t2diff", epochs=3, steps_per_epoch=100, batch_size=256,
                    interval_seconds=30.0, estimate_after_steps=20, clock=clock,
                    write=lines.append)
    defaults.update(kwargs)
    return TrainingProgress(**defaults)


def step_lines(lines):
    return [line for line in lines if re.match(r"t2diff epoch \d+/\d+: step", line)]


def test_a_line_at_least_every_interval_within_an_epoch():
    clock, lines = FakeClock(), []
    drive(new_progress(clock, lines), clock, epochs=3, steps=100, step_seconds=1.0)
    within = step_lines(lines)
    # 100 one-second steps per epoch, a line once 30 s have passed: steps 30, 60 and 90.
    assert [re.search(r"step (\d+)/", line).group(1) for line in within] == \
        ["30", "60", "90"] * 3
    assert within[0] == ("t2diff epoch 1/3: step 30/100 (30%), 256 examples/s, loss 4.7100, "
                         "epoch ETA 1m10s")


def test_no_line_within_epochs_shorter_than_the_interval():
    clock, lines = FakeClock(), []
    drive(new_progress(clock, lines, steps_per_epoch=20), clock, epochs=3, steps=20,
          step_seconds=1.0)
    assert step_lines(lines) == []
    assert sum(" done in " in line for line in lines) == 3


def test_slow_steps_print_on_every_step_past_the_interval():
    clock, lines = FakeClock(), []
    drive(new_progress(clock, lines, epochs=1, steps_per_epoch=5), clock, epochs=1, steps=5,
          step_seconds=45.0)
    assert len(step_lines(lines)) == 5


def test_the_estimate_comes_once_after_the_timed_steps_and_excludes_tracing():
    clock, lines = FakeClock(), []
    # The first step traces (60 s); the others take 2 s. 3 epochs of 100 steps:
    # 60 + 2 * 299 = 658 s.
    drive(new_progress(clock, lines), clock, epochs=3, steps=100, step_seconds=2.0,
          first_step_seconds=60.0)
    estimates = [line for line in lines if line.startswith("training t2diff:")]
    assert estimates == ["training t2diff: ~11 min estimated for 3 epochs (100 steps/epoch, "
                         "2,000 ms/step; validation after each epoch not included)"]
    # It is printed before the first epoch ends, right after step 21.
    assert lines.index(estimates[0]) < next(i for i, line in enumerate(lines)
                                            if " done in " in line)


def test_epoch_lines_carry_loss_validation_metric_and_time_left():
    clock, lines = FakeClock(), []
    drive(new_progress(clock, lines, steps_per_epoch=10), clock, epochs=3, steps=10,
          step_seconds=6.0)
    done = [line for line in lines if " done in " in line]
    assert done == [
        "t2diff epoch 1/3 done in 1m00s: loss 4.5000, val recall@20 0.2500; ~2 min left at most",
        "t2diff epoch 2/3 done in 1m00s: loss 4.5000, val recall@20 0.2500; ~60 s left at most",
        "t2diff epoch 3/3 done in 1m00s: loss 4.5000, val recall@20 0.2500"]


def test_unknown_epoch_length_is_learnt_from_the_first_epoch():
    clock, lines = FakeClock(), []
    progress = new_progress(clock, lines, epochs=2, steps_per_epoch=None)
    drive(progress, clock, epochs=2, steps=70, step_seconds=1.0)
    within = step_lines(lines)
    assert within[0].startswith("t2diff epoch 1/2: step 30, ")  # no total yet
    assert within[2].startswith("t2diff epoch 2/2: step 30/70 (43%)")
    assert progress.steps_per_epoch == 70


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="interval_seconds"):
        TrainingProgress("m", epochs=1, interval_seconds=0)


def test_durations_and_estimates_read_as_people_write_them():
    assert [format_duration(s) for s in (4.24, 42, 75, 5400)] == ["4.2s", "42s", "1m15s",
                                                                 "1h30m"]
    assert [format_estimate(s) for s in (45, 2400, 9000)] == ["~45 s", "~40 min", "~2.5 h"]


def test_verbose_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("T2DIFF_VERBOSE", "1")
    assert verbose_requested()
    monkeypatch.setenv("T2DIFF_VERBOSE", "0")
    assert not verbose_requested()


class StepClock(tf.keras.callbacks.Callback):
    """Moves a fake clock one second per training step (placed before the progress callback)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_train_batch_end(self, batch, logs=None):
        self.clock.advance(1.0)


def test_fit_prints_epoch_lines_with_the_validation_metric_it_selects_on():
    data = synthetic_arrays(SyntheticConfig(num_users=200, num_items=120, num_clusters=8))
    clock, lines = FakeClock(), []
    train = arrays_dataset(data.splits["train"], 16)
    steps = int(train.cardinality().numpy())
    assert steps > 35  # long enough for one line within each epoch
    progress = TrainingProgress("mean_pool_two_tower", epochs=2, batch_size=16,
                                interval_seconds=30, estimate_after_steps=5, clock=clock,
                                write=lines.append)
    _, history = fit(lambda: build_model("mean_pool_two_tower", {"embedding_dim": 8},
                                         num_items=data.num_items),
                     train, arrays_dataset(data.splits["validation"], 256),
                     TrainConfig(epochs=2, batch_size=16, early_stopping_patience=0, verbose=0),
                     callbacks=[StepClock(clock), progress])
    done = [line for line in lines if " done in " in line]
    assert len(done) == 2
    for epoch, line in enumerate(done):
        value = history["val_recall@20"][epoch]
        assert f"val recall@20 {value:.4f}" in line
    assert sum(line.startswith("training mean_pool_two_tower: ") for line in lines) == 1
    # Keras knows the length of in-memory data: every line within an epoch has its total.
    within = [line for line in lines if ": step " in line]
    assert len(within) == 2 * (steps // 30)
    assert all(f"/{steps} (" in line for line in within)
    assert np.isfinite(float(re.search(r"loss ([\d.]+)", within[0]).group(1)))
