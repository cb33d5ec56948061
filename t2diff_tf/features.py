"""The example format shared by preprocessing and every model.

One ``tf.Example`` per window (a history of behaviours and the next item), with fixed shapes so
that ``tf.data`` batches without ragged tensors:

===================  ========  ======  ===================================================
feature              dtype     shape   meaning
===================  ========  ======  ===================================================
``user_id``          bytes     []      raw user id
``history``          int64     [L]     item ids 1..N, oldest first, left-padded with 0
``history_time_lag`` int64     [L]     bucketised gap from each behaviour to the target
                                       (0 on padding; see :func:`time_lag_bucket`)
``history_session``  int64     [L]     session index counted back from the target
                                       (0 = the most recent session, -1 on padding)
``session_length``   int64     []      length of the most recent session (<= L)
``target``           int64     []      the next item id (1..N)
``target_timestamp`` int64     []      seconds since the epoch, 0 when the log has no time
===================  ========  ======  ===================================================

Item id 0 is reserved for padding. The module is pure TensorFlow and is imported by the
preprocessing (to write) and by the models (to read), so neither depends on the other.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict

import tensorflow as tf

USER_ID = "user_id"
HISTORY = "history"
HISTORY_TIME_LAG = "history_time_lag"
HISTORY_SESSION = "history_session"
SESSION_LENGTH = "session_length"
TARGET = "target"
TARGET_TIMESTAMP = "target_timestamp"

PADDING_ID = 0
PADDING_SESSION = -1

SEQUENCE_FEATURES = (HISTORY, HISTORY_TIME_LAG, HISTORY_SESSION)
SCALAR_FEATURES = (SESSION_LENGTH, TARGET, TARGET_TIMESTAMP)
# Features a user tower may read (the target and its timestamp are labels, never inputs).
QUERY_FEATURES = (HISTORY, HISTORY_TIME_LAG, HISTORY_SESSION, SESSION_LENGTH)


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """Shapes of the window examples.

    Attributes:
      history_length: ``L``, the number of behaviours kept before the target.
      num_time_lag_buckets: size of the time-lag vocabulary, padding bucket 0 included.
    """

    history_length: int = 50
    num_time_lag_buckets: int = 32

    def __post_init__(self):
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")
        if self.num_time_lag_buckets < 3:
            raise ValueError(
                f"num_time_lag_buckets must be >= 3, got {self.num_time_lag_buckets}")

    def feature_spec(self, with_user_id: bool = True) -> Dict[str, tf.io.FixedLenFeature]:
        """The ``tf.io.parse_example`` spec of one window."""
        spec = {name: tf.io.FixedLenFeature([self.history_length], tf.int64)
                for name in SEQUENCE_FEATURES}
        spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in SCALAR_FEATURES})
        if with_user_id:
            spec[USER_ID] = tf.io.FixedLenFeature([], tf.string)
        return spec

    def parse(self, serialized: tf.Tensor, with_user_id: bool = True) -> Dict[str, tf.Tensor]:
        """Parses a batch ``[batch]`` of serialized examples into ``{name: [batch, ...]}``."""
        return tf.io.parse_example(serialized, self.feature_spec(with_user_id))

    def time_lag_bucket(self, gap: float) -> int:
        return time_lag_bucket(gap, self.num_time_lag_buckets)


def query_input_specs(spec: ExampleSpec) -> Dict[str, tf.TensorSpec]:
    """``{name: TensorSpec}`` of the ``QUERY_FEATURES`` with a batch dimension: the inputs of
    every user tower and of its serving signatures."""
    length = spec.history_length
    return {
        HISTORY: tf.TensorSpec([None, length], tf.int64, name=HISTORY),
        HISTORY_TIME_LAG: tf.TensorSpec([None, length], tf.int64, name=HISTORY_TIME_LAG),
        HISTORY_SESSION: tf.TensorSpec([None, length], tf.int64, name=HISTORY_SESSION),
        SESSION_LENGTH: tf.TensorSpec([None], tf.int64, name=SESSION_LENGTH),
    }


def time_lag_bucket(gap: float, num_buckets: int) -> int:
    """Log2 bucket of a non-negative gap (seconds, or steps when the log has no time).

    Bucket 0 is padding; a gap ``g`` goes to ``1 + floor(log2(1 + g))`` capped at
    ``num_buckets - 1``. With seconds, 32 buckets reach past 30 years.
    """
    if gap < 0:
        raise ValueError(f"time gap must be >= 0, got {gap}")
    return int(min(num_buckets - 1, 1 + math.floor(math.log2(1.0 + gap))))
