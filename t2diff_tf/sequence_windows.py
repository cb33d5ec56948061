"""Every position of a sequence chunk as the window a per-target model reads.

The sequence layout (:class:`~t2diff_tf.features.SequenceSpec`) stores each user's training
history once, in chunks of ``L + 1`` items; a next-item model (SASRec, ...) reads a chunk in one
causal pass. A per-target model (T2Diff, its ablations, the two-towers) reads one window per
target instead: the ``W`` behaviours before it, their time lags to the target, their sessions
counted back from the target and the length of the most recent session
(:data:`~t2diff_tf.features.QUERY_FEATURES`). :func:`chunk_windows` builds those windows for
every labelled position of a batch of chunks inside the graph, so that such a model also learns
from every training interaction once per epoch, while the files hold each interaction once
instead of ``W`` times.

For a chunk position ``p`` (``1 <= p``, item ``p - 1`` and item ``p`` valid) the window is the
one the preprocessing would write for target ``items[p]`` (``components/preprocessing/windows.py``
``make_window``), restricted to the chunk: when a chunk does not start at the user's first item,
its first ``W`` positions see fewer than ``W`` behaviours (the items of the older chunk are not
in the batch), exactly as a next-item model's early positions do.

* ``history``: ``items[p - W .. p - 1]``, left-padded with 0;
* ``history_time_lag``: :func:`~t2diff_tf.features.time_lag_buckets` of
  ``timestamps[p] - timestamps[j]`` (seconds, or steps when the log has no time), 0 on padding;
* ``history_session``: under the last-k rule (``session_k``) ``(s[p-1] - s[j]) // k`` with
  ``s`` the chunk's step indices; under the time-gap rule (``session_k=None``)
  ``s[p-1] - s[j]`` with ``s`` the session numbers; -1 on padding;
* ``history_timestamps``: ``timestamps[p - W .. p - 1]`` (seconds, or step indices), 0 on
  padding;
* ``session_length``: the number of behaviours in session 0;
* ``target``: ``items[p]``.

The target is never inside its own window: windows hold positions strictly before ``p``.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

from t2diff_tf.lazy_import import tensorflow as tf  # the preprocessing needs no TensorFlow

from t2diff_tf import features as F


@dataclasses.dataclass(frozen=True)
class SequenceWindowConfig:
    """How chunk positions become windows.

    Attributes:
      window_length: ``W``, the behaviours of a window (the model's
        ``ExampleSpec.history_length``).
      num_time_lag_buckets: size of the time-lag vocabulary (``ExampleSpec``).
      session_k: ``k`` of the last-k session rule; ``None`` for time-gap sessions (the chunk's
        ``sequence_sessions`` are then session numbers, not step indices).
    """

    window_length: int = 50
    num_time_lag_buckets: int = 32
    session_k: Optional[int] = 10

    def __post_init__(self):
        if self.window_length < 1:
            raise ValueError(f"window_length must be >= 1, got {self.window_length}")
        if self.num_time_lag_buckets < 3:
            raise ValueError(
                f"num_time_lag_buckets must be >= 3, got {self.num_time_lag_buckets}")
        if self.session_k is not None and self.session_k < 1:
            raise ValueError(f"session_k must be >= 1 or None, got {self.session_k}")

    @classmethod
    def for_examples(cls, spec: F.ExampleSpec, session_k: Optional[int]
                     ) -> "SequenceWindowConfig":
        """The windows of ``spec``'s shape (``session_k=None``: time-gap sessions)."""
        return cls(spec.history_length, spec.num_time_lag_buckets, session_k)


def _frames(values: tf.Tensor, length: int, pad_value: int) -> tf.Tensor:
    """``[batch, C]`` -> ``[batch, C - 1, length]``: row ``p - 1`` holds
    ``values[p - length .. p - 1]`` (left-padded with ``pad_value``), for ``p = 1 .. C - 1``."""
    padded = tf.pad(values, [[0, 0], [length, 0]], constant_values=pad_value)
    frames = tf.signal.frame(padded, frame_length=length, frame_step=1, axis=1)
    # Frame i covers values[i - length .. i - 1]; positions p = 1 .. C - 1.
    return frames[:, 1:tf.shape(values)[1]]


def chunk_windows(chunks: Dict[str, tf.Tensor], config: SequenceWindowConfig
                  ) -> Dict[str, tf.Tensor]:
    """The window of every labelled position of a batch of chunks.

    Args:
      chunks: ``sequence_items``, ``sequence_timestamps``, ``sequence_sessions``, each
        ``[batch, C]`` int (left-padded chunks; ``C`` may be shorter than ``L + 1`` when the
        batch was trimmed of left padding).
      config: window shape and session rule.

    Returns:
      ``{history, history_time_lag, history_session, history_timestamps: [P, W],
      session_length, target: [P]}``
      (int64) for the ``P`` positions whose item and previous item are valid, in chunk order.
    """
    W = config.window_length
    items = tf.cast(chunks[F.SEQUENCE_ITEMS], tf.int64)
    times = tf.cast(chunks[F.SEQUENCE_TIMESTAMPS], tf.int64)
    sessions = tf.cast(chunks[F.SEQUENCE_SESSIONS], tf.int64)

    history = _frames(items, W, F.PADDING_ID)                    # [batch, C - 1, W]
    history_times = _frames(times, W, 0)
    history_sessions = _frames(sessions, W, F.PADDING_SESSION)
    targets = items[:, 1:]                                        # [batch, C - 1]
    labelled = tf.logical_and(tf.not_equal(targets, F.PADDING_ID),
                              tf.not_equal(items[:, :-1], F.PADDING_ID))

    history = tf.boolean_mask(history, labelled)                  # [P, W]
    history_times = tf.boolean_mask(history_times, labelled)
    history_sessions = tf.boolean_mask(history_sessions, labelled)
    target = tf.boolean_mask(targets, labelled)                   # [P]
    target_time = tf.boolean_mask(times[:, 1:], labelled)
    valid = tf.not_equal(history, F.PADDING_ID)

    gaps = tf.maximum(target_time[:, None] - history_times, 0)
    lags = tf.where(valid, F.time_lag_buckets(gaps, config.num_time_lag_buckets),
                    tf.zeros_like(gaps))

    back = history_sessions[:, -1:] - history_sessions             # >= 0 on valid positions
    if config.session_k is not None:
        back = back // config.session_k
    session = tf.where(valid, back, tf.fill(tf.shape(back), tf.constant(F.PADDING_SESSION,
                                                                         tf.int64)))
    session_length = tf.reduce_sum(tf.cast(tf.equal(session, 0), tf.int64), axis=1)
    return {F.HISTORY: history, F.HISTORY_TIME_LAG: lags, F.HISTORY_SESSION: session,
            F.HISTORY_TIMESTAMPS: tf.where(valid, history_times, tf.zeros_like(history_times)),
            F.SESSION_LENGTH: session_length, F.TARGET: target}
