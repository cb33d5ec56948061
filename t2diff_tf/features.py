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
``history_timestamps`` int64   [L]     seconds since the epoch of each behaviour, or its
                                       step index in the user's log when the log has no
                                       time (0 on padding): gaps between any two behaviours
                                       follow (HSTU's time bias reads them)
``session_length``   int64     []      length of the most recent session (<= L)
``target``           int64     []      the next item id (1..N)
``target_timestamp`` int64     []      seconds since the epoch, 0 when the log has no time
===================  ========  ======  ===================================================

Item id 0 is reserved for padding. The module is pure TensorFlow and is imported by the
preprocessing (to write) and by the models (to read), so neither depends on the other.

A second layout, **sequences** (:class:`SequenceSpec`), is for training only: one
``tf.Example`` per chunk of a user's training history, so that a model computes every position's
next item in one pass and every training interaction is a label exactly once per epoch:

=======================  ========  ========  ================================================
feature                  dtype     shape     meaning
=======================  ========  ========  ================================================
``user_id``              bytes     []        raw user id
``sequence_items``       int64     [L + 1]   item ids 1..N, oldest first, left-padded with 0;
                                             positions ``0..L-1`` are inputs, ``1..L`` labels
``sequence_timestamps``  int64     [L + 1]   seconds since the epoch, or the item's step index
                                             in the user's log when the log has no time (0 on
                                             padding): lags to any later position follow
``sequence_sessions``    int64     [L + 1]   session id, non-decreasing with time: the
                                             time-gap rule's session number; under the last-k
                                             rule the step index (the session of item j seen
                                             from position t is ``(s_t - s_j) // k``); -1 on
                                             padding
``sequence_length``      int64     []        valid items in the chunk (<= L + 1)
=======================  ========  ========  ================================================

Validation and test targets are never inside a training chunk (``components/preprocessing/
sequences.py`` cuts the chunks; a test checks all of ML-1M). :func:`sequence_as_window` turns a
batch of chunks into the window features (``history`` = the first ``L`` items, ``target`` = the
last, and the inputs' timestamps and time lags to the last), so a next-item model trains on
either layout with the same code.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Dict, Mapping, Optional, Sequence, Union

from t2diff_tf.lazy_import import tensorflow as tf  # the preprocessing needs no TensorFlow

USER_ID = "user_id"
HISTORY = "history"
HISTORY_TIME_LAG = "history_time_lag"
HISTORY_SESSION = "history_session"
HISTORY_TIMESTAMPS = "history_timestamps"
SESSION_LENGTH = "session_length"
TARGET = "target"
TARGET_TIMESTAMP = "target_timestamp"

# Optional evaluation-only feature: ``[batch, S]`` every item the user has seen before the
# target (0-padded), when the window's ``history`` (the last ``L``) is not the whole history.
# ``t2diff_tf.metrics.evaluate(..., exclude_history=True)`` drops these from the ranking.
SEEN_ITEMS = "seen_items"

PADDING_ID = 0
PADDING_SESSION = -1

SEQUENCE_FEATURES = (HISTORY, HISTORY_TIME_LAG, HISTORY_SESSION, HISTORY_TIMESTAMPS)
SCALAR_FEATURES = (SESSION_LENGTH, TARGET, TARGET_TIMESTAMP)
# Features a user tower may read (the target and its timestamp are labels, never inputs).
QUERY_FEATURES = (HISTORY, HISTORY_TIME_LAG, HISTORY_SESSION, SESSION_LENGTH,
                  HISTORY_TIMESTAMPS)


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """Shapes of the window examples.

    Attributes:
      history_length: ``L``, the number of behaviours kept before the target.
      num_time_lag_buckets: size of the time-lag vocabulary, padding bucket 0 included.
      max_positions: the longest sequence a model's positional embeddings must cover, when it
        is longer than the windows: a model that trains on sequence chunks of 200 inputs and
        ranks windows of 50 needs 200 (see :func:`model_example_spec`). ``None``:
        ``history_length``. Windows, parsing and serving signatures keep ``history_length``.
    """

    history_length: int = 50
    num_time_lag_buckets: int = 32
    max_positions: Optional[int] = None

    def __post_init__(self):
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")
        if self.num_time_lag_buckets < 3:
            raise ValueError(
                f"num_time_lag_buckets must be >= 3, got {self.num_time_lag_buckets}")
        if self.max_positions is not None and self.max_positions < self.history_length:
            raise ValueError(f"max_positions must be >= history_length ({self.history_length}) "
                             f"or None, got {self.max_positions}")

    @property
    def positions(self) -> int:
        """Positional embeddings a sequence encoder needs: ``max_positions`` or ``L``."""
        return self.max_positions or self.history_length

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


SEQUENCE_ITEMS = "sequence_items"
SEQUENCE_TIMESTAMPS = "sequence_timestamps"
SEQUENCE_SESSIONS = "sequence_sessions"
SEQUENCE_LENGTH = "sequence_length"
CHUNK_FEATURES = (SEQUENCE_ITEMS, SEQUENCE_TIMESTAMPS, SEQUENCE_SESSIONS)


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """Shapes of the training sequence chunks.

    Attributes:
      history_length: ``L``, the input positions of a chunk; a chunk stores ``L + 1`` items
        (its ``L`` inputs and the ``L`` next items they predict, shifted by one). 200 is the
        usual SASRec setting on MovieLens.
      max_chunks_per_user: keep only each user's latest chunks (``None``: every chunk, so every
        training interaction is a label; 1: the latest ``L + 1`` items, SASRec's original
        layout).
    """

    history_length: int = 200
    max_chunks_per_user: Optional[int] = None

    def __post_init__(self):
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")
        if self.max_chunks_per_user is not None and self.max_chunks_per_user < 1:
            raise ValueError("max_chunks_per_user must be >= 1 or None")

    @property
    def chunk_length(self) -> int:
        """Items stored per chunk: ``L + 1``."""
        return self.history_length + 1

    def feature_spec(self, with_user_id: bool = True) -> Dict[str, tf.io.FixedLenFeature]:
        """The ``tf.io.parse_example`` spec of one chunk."""
        spec = {name: tf.io.FixedLenFeature([self.chunk_length], tf.int64)
                for name in CHUNK_FEATURES}
        spec[SEQUENCE_LENGTH] = tf.io.FixedLenFeature([], tf.int64)
        if with_user_id:
            spec[USER_ID] = tf.io.FixedLenFeature([], tf.string)
        return spec

    def parse(self, serialized: tf.Tensor, with_user_id: bool = True) -> Dict[str, tf.Tensor]:
        """Parses a batch ``[batch]`` of serialized chunks into ``{name: [batch, ...]}``."""
        return tf.io.parse_example(serialized, self.feature_spec(with_user_id))


def model_example_spec(example: ExampleSpec, sequences: Optional[SequenceSpec]) -> ExampleSpec:
    """The example spec to build a model with: ``example``, with ``max_positions`` raised to
    the chunks' input length when training chunks (``sequences``) are longer than the windows
    (e.g. the paper protocol's windows of 50 with chunks of 200), so that a model that trains
    on chunks has a positional embedding for every chunk position."""
    if sequences is None or sequences.history_length <= example.positions:
        return example
    return dataclasses.replace(example, max_positions=sequences.history_length)


def sequence_as_window(chunks: Dict[str, tf.Tensor],
                       num_time_lag_buckets: int = ExampleSpec.num_time_lag_buckets
                       ) -> Dict[str, tf.Tensor]:
    """A batch of chunks ``{sequence_items: [batch, l + 1], ...}`` as next-item features.

    Returns ``history`` = ``sequence_items[:, :-1]`` ``[batch, l]`` and ``target`` = the last
    item ``[batch]``: the labels of a next-item model's every position are then
    ``concat(history[:, 1:], target)``, exactly the chunk shifted by one. When the chunks carry
    ``sequence_timestamps``, also the inputs' ``history_timestamps`` ``[batch, l]`` and their
    ``history_time_lag`` to the last item (:func:`time_lag_buckets`, 0 on padding), as a window
    whose target is the chunk's last item holds them. A chunk's other positions' gaps follow
    from ``history_timestamps``.
    """
    items = tf.cast(chunks[SEQUENCE_ITEMS], tf.int64)
    window = {HISTORY: items[:, :-1], TARGET: items[:, -1]}
    if SEQUENCE_TIMESTAMPS in chunks:
        times = tf.cast(chunks[SEQUENCE_TIMESTAMPS], tf.int64)
        valid = tf.not_equal(window[HISTORY], PADDING_ID)
        none = tf.zeros_like(window[HISTORY])
        gaps = tf.maximum(times[:, -1:] - times[:, :-1], 0)
        window[HISTORY_TIMESTAMPS] = tf.where(valid, times[:, :-1], none)
        window[HISTORY_TIME_LAG] = tf.where(valid, time_lag_buckets(gaps, num_time_lag_buckets),
                                            none)
    return window


def trim_window_padding(features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """A batch of windows with the leading columns that are padding in every row dropped, but
    one: the per-behaviour features (``history``, its time lags, sessions and timestamps)
    ``[batch, L]`` ->
    ``[batch, min(L, longest + 1)]``; the rest unchanged.

    One padding column is kept so that a tower that drops the oldest column (BERT4Rec's
    ``concat(history[:, 1:], [MASK])``) drops padding, as it does on the full window. A tower
    whose output does not depend on how much left padding a window has (every model that
    trains on trimmed chunks) then gives the same embeddings at a fraction of the cost when
    the batch's histories are short.
    """
    history = features[HISTORY]
    width = tf.shape(history)[1]
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(history != PADDING_ID, tf.int32), axis=1))
    start = width - tf.minimum(longest + 1, width)
    return {name: value[:, start:] if name in SEQUENCE_FEATURES else value
            for name, value in features.items()}


def int64_example(values: Mapping[str, Union[int, Sequence[int]]], user_id: str
                  ) -> tf.train.Example:
    """A ``tf.train.Example`` of int64 features (an int or a list each) and the ``user_id``
    bytes feature: how the preprocessing writes windows and chunks. Filled in place (about 3x
    faster than building a ``Feature`` per value list)."""
    example = tf.train.Example()
    feature = example.features.feature
    for name, value in values.items():
        if isinstance(value, numbers.Integral):
            feature[name].int64_list.value.append(value)
        else:
            feature[name].int64_list.value.extend(value)
    feature[USER_ID].bytes_list.value.append(str(user_id).encode())
    return example


def query_input_specs(spec: ExampleSpec) -> Dict[str, tf.TensorSpec]:
    """``{name: TensorSpec}`` of the ``QUERY_FEATURES`` with a batch dimension: the inputs of
    every user tower and of its serving signatures."""
    length = spec.history_length
    return {
        HISTORY: tf.TensorSpec([None, length], tf.int64, name=HISTORY),
        HISTORY_TIME_LAG: tf.TensorSpec([None, length], tf.int64, name=HISTORY_TIME_LAG),
        HISTORY_SESSION: tf.TensorSpec([None, length], tf.int64, name=HISTORY_SESSION),
        SESSION_LENGTH: tf.TensorSpec([None], tf.int64, name=SESSION_LENGTH),
        HISTORY_TIMESTAMPS: tf.TensorSpec([None, length], tf.int64, name=HISTORY_TIMESTAMPS),
    }


def time_lag_bucket(gap: float, num_buckets: int) -> int:
    """Log2 bucket of a non-negative gap (seconds, or steps when the log has no time).

    Bucket 0 is padding; a gap ``g`` goes to ``1 + floor(log2(1 + g))`` capped at
    ``num_buckets - 1``. With seconds, 32 buckets reach past 30 years.
    """
    if gap < 0:
        raise ValueError(f"time gap must be >= 0, got {gap}")
    # 1 + floor(log2(1 + g)) == bit_length(1 + floor(g)), exact at every size (a float log2
    # rounds 2**k - 1 up to k from k = 49 on).
    return int(min(num_buckets - 1, (1 + math.floor(gap)).bit_length()))


def time_lag_buckets(gaps: tf.Tensor, num_buckets: int) -> tf.Tensor:
    """:func:`time_lag_bucket` of every entry of an int tensor of gaps ``>= 0`` (any shape),
    exact: ``floor(log2(1 + g))`` is computed in float64 and corrected by one where rounding
    crossed a power of two."""
    x = tf.cast(gaps, tf.int64) + 1
    guess = tf.cast(tf.floor(tf.math.log(tf.cast(x, tf.float64)) / math.log(2.0)), tf.int64)
    guess = tf.clip_by_value(guess, 0, 62)
    one = tf.constant(1, tf.int64)
    guess -= tf.cast(tf.bitwise.left_shift(one, guess) > x, tf.int64)
    guess += tf.cast(tf.bitwise.left_shift(one, tf.minimum(guess + 1, 62)) <= x, tf.int64)
    return tf.minimum(tf.cast(num_buckets - 1, tf.int64), 1 + guess)
