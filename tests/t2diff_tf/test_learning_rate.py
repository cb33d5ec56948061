"""Learning-rate schedules: closed forms, and the rate an epoch trains with, resumed or not."""

import math

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.learning_rate import EpochLearningRate, LearningRateSchedule
from t2diff_tf.training import TrainConfig


def test_closed_forms():
    r = 2e-3
    cosine = LearningRateSchedule("cosine", warmup_epochs=2, final_fraction=0.1)
    assert [cosine.rate(r, e, 10) for e in range(2)] == pytest.approx([r / 3, 2 * r / 3])
    assert cosine.rate(r, 2, 10) == pytest.approx(r)  # the decay starts at the base rate
    p = (6 - 2) / 8
    assert cosine.rate(r, 6, 10) == pytest.approx(r * (0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2))
    assert cosine.rate(r, 10, 10) == pytest.approx(0.1 * r)  # and ends at final_fraction
    linear = LearningRateSchedule("linear")
    assert [linear.rate(r, e, 4) for e in range(4)] == pytest.approx([r, 0.75 * r, 0.5 * r,
                                                                      0.25 * r])
    assert LearningRateSchedule().rate(r, 7, 10) == r
    rates = [cosine.rate(r, e, 30) for e in range(2, 30)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # monotone after the warm-up


@pytest.mark.parametrize("values", [{"kind": "step"}, {"warmup_epochs": -1},
                                    {"final_fraction": 1.5}])
def test_bad_settings_are_refused(values):
    with pytest.raises(ValueError):
        LearningRateSchedule(**values)


def test_train_config_reads_the_schedule_from_a_dict():
    config = TrainConfig.from_dict({"epochs": 5, "learning_rate_schedule": {
        "kind": "cosine", "warmup_epochs": 1}})
    assert config.learning_rate_schedule == LearningRateSchedule("cosine", 1)
    import dataclasses
    assert TrainConfig.from_dict(dataclasses.asdict(config)) == config


def test_each_epoch_trains_with_its_rate_also_after_a_resume():
    """Keras fit with initial_epoch (what BackupAndRestore does on a resume) gets the same rate
    per epoch as an uninterrupted run; the rate is the one the optimizer steps with."""
    schedule = LearningRateSchedule("cosine", warmup_epochs=1)
    x = np.ones((8, 1), np.float32)

    def rates_seen(initial_epoch):
        seen = []

        class Record(tf.keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                seen.append(float(tf.keras.backend.get_value(self.model.optimizer.learning_rate)))

        model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
        model.compile(tf.keras.optimizers.SGD(0.5), "mse")
        history = model.fit(x, x, batch_size=8, epochs=5, initial_epoch=initial_epoch, verbose=0,
                            callbacks=[EpochLearningRate(schedule, 0.5, 5), Record()])
        assert history.history["learning_rate"] == pytest.approx(seen)
        return seen

    full = rates_seen(0)
    assert full == pytest.approx([schedule.rate(0.5, e, 5) for e in range(5)])
    assert rates_seen(3) == pytest.approx(full[3:])
