"""Training progress for people: one line at a time, at a bounded cadence.

Keras's own output is either a progress bar redrawn in place (``verbose=1``; unreadable in a log
file) or one line per epoch (``verbose=2``; a four-minute epoch is silent). ``TrainingProgress``
prints instead, each as one plain line:

* once, after the first ``estimate_after_steps`` steps, an estimate of the whole training::

      training t2diff: ~40 min estimated for 10 epochs (1,562 steps/epoch, 153 ms/step; ...)

* within an epoch, at most every ``interval_seconds`` (30 s by default)::

      t2diff epoch 2/10: step 812/1,562 (52%), 1,660 examples/s, loss 5.0723, epoch ETA 1m52s

* at the end of every epoch, with the validation metrics the other callbacks logged::

      t2diff epoch 2/10 done in 4m01s: loss 5.0723, val recall@20 0.4747; ~32 min left

The clock and the writer are injected (``clock``, ``write``), so the cadence is testable without
sleeping. Nothing here imports TFX or Beam.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

import tensorflow as tf

# The environment variable the ``t2diff`` command sets for ``--verbose``: the pipeline's Trainer
# then keeps Keras's own per-epoch lines besides these.
VERBOSE_ENV = "T2DIFF_VERBOSE"


def verbose_requested() -> bool:
    """Whether the user asked for the full output (``--verbose``; ``T2DIFF_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def format_duration(seconds: float) -> str:
    """``4.2`` -> ``"4.2s"``, ``75`` -> ``"1m15s"``, ``5400`` -> ``"1h30m"``."""
    if seconds < 0 or not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_estimate(seconds: float) -> str:
    """A rough total for people: ``"~40 min"``, ``"~2.5 h"``, ``"~45 s"``."""
    if seconds < 90:
        return f"~{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"~{round(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


def _stdout_line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


class TrainingProgress(tf.keras.callbacks.Callback):
    """Prints training progress as single lines (see the module docstring).

    Args:
      name: what is trained, at the start of every line (e.g. the registry model name).
      epochs: the planned number of epochs (early stopping may end sooner).
      steps_per_epoch: steps of one epoch when known beforehand (e.g. examples / batch size);
        ``None``: taken from Keras when it knows it, else from the first finished epoch.
      batch_size: examples per step, for the examples/s figure (``None``: not shown).
      interval_seconds: the longest time between two lines within an epoch.
      estimate_after_steps: steps timed (after the first, which includes tracing) before the
        estimate of the whole training is printed; an epoch shorter than that estimates at its
        end.
      epoch_metrics: logged values shown at the end of an epoch besides the loss, when present
        (e.g. ``("val_recall@20",)``: the selection metric, logged by ``ValidationRanking``,
        which must come before this callback).
      clock: seconds, monotonic (``time.monotonic``; tests pass a fake).
      write: takes one line (default: printed to stdout and flushed).
    """

    def __init__(self, name: str, epochs: int, steps_per_epoch: Optional[int] = None,
                 batch_size: Optional[int] = None, interval_seconds: float = 30.0,
                 estimate_after_steps: int = 20, epoch_metrics: Sequence[str] = ("val_recall@20",),
                 clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] = _stdout_line):
        super().__init__()
        # Keras may pass the batch logs as tensors: no host sync on every step, only when a
        # line is printed.
        self._supports_tf_logs = True
        if interval_seconds <= 0 or estimate_after_steps < 1 or epochs < 1:
            raise ValueError("interval_seconds must be > 0, estimate_after_steps and epochs >= 1")
        self.name = name
        self.epochs = int(epochs)
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.interval_seconds = float(interval_seconds)
        self.estimate_after_steps = int(estimate_after_steps)
        self.epoch_metrics = tuple(epoch_metrics)
        self._clock = clock
        self._write = write
        self._epoch = 0
        self._epoch_start = 0.0
        self._last_line = 0.0
        self._steps_done = 0
        self._first_step_end: Optional[float] = None
        self._estimated = False
        self._epoch_seconds: list = []

    # -- Keras hooks ------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        keras_steps = (self.params or {}).get("steps")
        if self.steps_per_epoch is None and keras_steps:
            self.steps_per_epoch = int(keras_steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = self._last_line = self._clock()
        self._steps_done = 0
        self._first_step_end = None

    def on_train_batch_end(self, batch, logs=None):
        now = self._clock()
        self._steps_done = batch + 1
        if self._first_step_end is None:
            self._first_step_end = now
        elif (not self._estimated
              and self._steps_done - 1 >= self.estimate_after_steps):
            self._print_estimate(now)
        if now - self._last_line >= self.interval_seconds:
            self._last_line = now
            self._write(self._step_line(now, logs or {}))

    def on_epoch_end(self, epoch, logs=None):
        now = self._clock()
        if self._steps_done:
            self.steps_per_epoch = self._steps_done  # a finished pass has counted them
        if not self._estimated and self._steps_done > 1:
            self._print_estimate(now)
        seconds = now - self._epoch_start
        self._epoch_seconds.append(seconds)
        logs = logs or {}
        parts = [f"loss {logs['loss']:.4f}"] if "loss" in logs else []
        parts += [f"{name.replace('val_', 'val ', 1)} {float(logs[name]):.4f}"
                  for name in self.epoch_metrics if name in logs]
        line = (f"{self.name} epoch {epoch + 1}/{self.epochs} done in "
                f"{format_duration(seconds)}" + (f": {', '.join(parts)}" if parts else ""))
        remaining = self.epochs - (epoch + 1)
        if remaining > 0:
            mean_epoch = sum(self._epoch_seconds) / len(self._epoch_seconds)
            line += f"; {format_estimate(mean_epoch * remaining)} left at most"
        self._write(line)

    # -- lines ------------------------------------------------------------------------------

    def _seconds_per_step(self, now: float) -> Optional[float]:
        """Steady-state step time: from the end of the first step (tracing excluded) to now."""
        if self._first_step_end is None or self._steps_done < 2:
            return None
        return (now - self._first_step_end) / (self._steps_done - 1)

    def _print_estimate(self, now: float) -> None:
        self._estimated = True
        per_step = self._seconds_per_step(now)
        if per_step is None:
            return
        first_step = self._first_step_end - self._epoch_start
        if self.steps_per_epoch:
            # The first step (tracing) is paid once; every other step at the measured rate.
            total = first_step + per_step * (self.steps_per_epoch * self.epochs - 1)
            steps = f"{self.steps_per_epoch:,} steps/epoch, "
        else:
            total = None
            steps = ""
        rate = f"{steps}{per_step * 1000:,.0f} ms/step"
        if total is None:
            self._write(f"training {self.name}: {rate}; the length of an epoch is not known "
                        f"before the first one ends")
            return
        self._write(f"training {self.name}: {format_estimate(total)} estimated for "
                    f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} ({rate}; "
                    f"validation after each epoch not included)")

    def _step_line(self, now: float, logs: Mapping[str, float]) -> str:
        elapsed = now - self._epoch_start
        parts = []
        if self.steps_per_epoch:
            share = min(self._steps_done / self.steps_per_epoch, 1.0)
            parts.append(f"step {self._steps_done:,}/{self.steps_per_epoch:,} ({share:.0%})")
        else:
            parts.append(f"step {self._steps_done:,}")
        per_step = self._seconds_per_step(now)
        if self.batch_size and per_step:  # the steady rate: the first step's tracing excluded
            parts.append(f"{self.batch_size / per_step:,.0f} examples/s")
        elif self.batch_size and elapsed > 0:
            parts.append(f"{self._steps_done * self.batch_size / elapsed:,.0f} examples/s")
        if "loss" in logs:
            parts.append(f"loss {float(logs['loss']):.4f}")
        if self.steps_per_epoch and per_step is not None:
            left = max(self.steps_per_epoch - self._steps_done, 0) * per_step
            parts.append(f"epoch ETA {format_duration(left)}")
        return f"{self.name} epoch {self._epoch + 1}/{self.epochs}: {', '.join(parts)}"
