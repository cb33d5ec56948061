"""Learning-rate schedules by epoch: constant, or linear warm-up then cosine or linear decay.

The rate is a function of the epoch index only, set at the start of each epoch, so a run that
is killed and resumed (``TrainConfig.checkpoint_dir``) follows the same schedule as one that is
not: Keras' ``BackupAndRestore`` restores the epoch, and the epoch gives the rate. A per-step
schedule would need the number of steps an epoch before training, which a dataset of unknown
cardinality does not tell.

For epoch ``e`` (0-based) of ``E`` with base rate ``r`` and ``W`` warm-up epochs:

- warm-up (``e < W``): ``r * (e + 1) / (W + 1)``;
- then, with ``p = (e - W) / max(E - W, 1)`` in ``[0, 1)``:
  - ``cosine``: ``r * (f + (1 - f) * (1 + cos(pi * p)) / 2)``;
  - ``linear``: ``r * (1 - (1 - f) * p)``;
  - ``constant``: ``r``;

where ``f`` is ``final_fraction``, the fraction of ``r`` the decay heads for at epoch ``E``.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

KINDS = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
    """A schedule of the learning rate over epochs (see the module docstring).

    Attributes:
      kind: ``"constant"``, ``"cosine"`` or ``"linear"`` decay after the warm-up.
      warmup_epochs: epochs of linear warm-up before the decay (0: none).
      final_fraction: the fraction of the base rate the decay reaches at the last epoch.
    """

    kind: str = "constant"
    warmup_epochs: int = 0
    final_fraction: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"learning-rate schedule kind must be one of {KINDS}, got "
                             f"{self.kind!r}")
        if self.warmup_epochs < 0 or not 0.0 <= self.final_fraction <= 1.0:
            raise ValueError("warmup_epochs must be >= 0 and final_fraction in [0, 1], got "
                             f"{self.warmup_epochs} and {self.final_fraction}")

    def rate(self, base_rate: float, epoch: int, epochs: int) -> float:
        """The learning rate of 0-based ``epoch`` of ``epochs``."""
        if epoch < self.warmup_epochs:
            return base_rate * (epoch + 1) / (self.warmup_epochs + 1)
        progress = min((epoch - self.warmup_epochs) / max(epochs - self.warmup_epochs, 1), 1.0)
        f = self.final_fraction
        if self.kind == "cosine":
            return base_rate * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * progress)))
        if self.kind == "linear":
            return base_rate * (1.0 - (1.0 - f) * progress)
        return base_rate

    @classmethod
    def from_dict(cls, values) -> "LearningRateSchedule":
        return values if isinstance(values, cls) else cls(**dict(values))


class EpochLearningRate(tf.keras.callbacks.Callback):
    """Sets the optimizer's learning rate at the start of every epoch from ``schedule``, and
    logs it as ``learning_rate``."""

    def __init__(self, schedule: LearningRateSchedule, base_rate: float, epochs: int):
        super().__init__()
        self.schedule = schedule
        self.base_rate = base_rate
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        rate = self.schedule.rate(self.base_rate, epoch, self.epochs)
        tf.keras.backend.set_value(self.model.optimizer.learning_rate, rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                tf.keras.backend.get_value(self.model.optimizer.learning_rate))
