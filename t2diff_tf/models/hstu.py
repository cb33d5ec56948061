"""HSTU as a retrieval model: the next item at every position, cosine scores.

Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", ICML 2024. The published ML-1M figures (HSTU-large: Recall@10
0.3294, NDCG@10 0.1893; a TensorFlow reimplementation with a full softmax: 0.3419 / 0.1944) are
the highest we know on ML-1M leave-one-out, seen items excluded.

What is implemented (defaults: the reference's ML-1M "large" configuration):

* Inputs: the shared item vectors times ``sqrt(d)`` plus learned positions counted from the
  oldest behaviour, then dropout (the reference's positional input preprocessor);
  ``position_origin="last"`` counts them from the newest, as the TensorFlow reimplementation
  does.
* Encoder: :class:`~t2diff_tf.layers.hstu.HSTUEncoder` -- ``num_blocks`` HSTU blocks (SiLU
  pointwise attention, a relative position bias unless ``relative_position_bias`` is off as in
  the TensorFlow reimplementation's recipe, ``u``-gating), with ``time_bias`` also the
  reference's bias for the bucketed gap between each query's next behaviour and each key
  (:func:`next_behaviour_time_buckets`).
* Scores: the L2-normalised last state against the L2-normalised item vectors of the same
  table (tied embeddings), the training logits divided by ``temperature`` (0.05).
* Training: like SASRec (:class:`~t2diff_tf.models.sequential.NextItemModel`), the next item at
  every valid position; the loss is the full softmax by default (the TensorFlow
  reimplementation's), sampled softmax (the reference's 128 negatives) or gBCE.

The time bias's buckets are the windows' own (:func:`t2diff_tf.features.time_lag_buckets`,
``1 + floor(log2(1 + gap))``, ``ExampleSpec.num_time_lag_buckets`` of them), not the
reference's ``floor(ln(gap) / 0.301)`` up to 128: the last query's gaps are the window's
``history_time_lag`` (to the target's time, the request's at serving), which the preprocessing
buckets so, and every other query's are bucketed the same way. As in the reference, query ``i``
is timed at its next behaviour, the item it is trained to predict: its time, never its id.

Not implemented: the reference's jagged kernels (dense, masked maths here).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.hstu import (INPUT, MAX_LENGTH, POSITIONS_FROM_FIRST, HSTUEncoder,
                                   check_attention_normalization, check_position_origin,
                                   check_residual)
from t2diff_tf.layers.next_item_loss import NextItemLossConfig
from t2diff_tf.models.base import Features
from t2diff_tf.models.config import DictConfig
from t2diff_tf.models.sequential import NextItemModel, check_next_item_settings


@dataclasses.dataclass(frozen=True)
class HSTUConfig(DictConfig):
    """Hyperparameters of :class:`HSTU` (defaults: the reference's ML-1M HSTU-large).

    Attributes:
      embedding_dim: ``d`` (50).
      num_blocks: HSTU blocks (8).
      num_heads: attention heads (2).
      linear_dim: per-head width of ``u`` and ``v`` (25).
      attention_dim: per-head width of ``q`` and ``k`` (25).
      dropout: on the inputs and in each block (0.2).
      attention_normalization: the attention weights' divisor, ``"max_length"`` (the
        reference's) or ``"visible_keys"`` (the TensorFlow reimplementation's); see
        :mod:`t2diff_tf.layers.hstu`.
      time_bias: add the bias of the bucketed gap between each query's next behaviour and
        each key (both references have it; it reads ``history_timestamps`` and
        ``history_time_lag``).
      residual: what each block's branch is added to, ``"input"`` (the reference's) or
        ``"normalized_input"`` (the TensorFlow reimplementation's); see
        :mod:`t2diff_tf.layers.hstu`.
      position_origin: ``"first"`` (the reference's: the oldest behaviour takes the first
        positional embedding) or ``"last"`` (the TensorFlow reimplementation's: the newest
        takes the last).
      relative_position_bias: each block's bias per offset ``j - i`` (the reference has it;
        the TensorFlow reimplementation's ML-1M recipe does not).
      all_positions: train on every position's next item (else only on the window's target).
      loss: the per-position loss (full softmax, sampled softmax or gBCE).
      temperature: training logits (cosines) are divided by it; rankings do not depend on it.
      embedding_stddev: the item embeddings start from ``N(0, embedding_stddev)``.
      tied_item_embeddings: score against the input item table itself (HSTU's).
      scale_embeddings: multiply the input item vectors by ``sqrt(d)`` (HSTU's).
      normalize: cosine scores, user and item vectors L2-normalised (HSTU's).
    """

    embedding_dim: int = 50
    num_blocks: int = 8
    num_heads: int = 2
    linear_dim: int = 25
    attention_dim: int = 25
    dropout: float = 0.2
    attention_normalization: str = MAX_LENGTH
    time_bias: bool = False
    residual: str = INPUT
    position_origin: str = POSITIONS_FROM_FIRST
    relative_position_bias: bool = True
    all_positions: bool = True
    loss: NextItemLossConfig = NextItemLossConfig()
    temperature: float = 0.05
    embedding_stddev: float = 0.02
    tied_item_embeddings: bool = True
    scale_embeddings: bool = True
    normalize: bool = True

    def __post_init__(self):
        check_next_item_settings(self)
        for name in ("num_blocks", "num_heads", "linear_dim", "attention_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_attention_normalization(self.attention_normalization)
        check_residual(self.residual)
        check_position_origin(self.position_origin)


def next_behaviour_time_buckets(features: Features, num_buckets: int) -> tf.Tensor:
    """The time bias's bucket of every (query, key) pair of a batch of windows.

    Args:
      features: ``history``, ``history_timestamps`` and ``history_time_lag``, each
        ``[batch, L]``.
      num_buckets: the windows' ``num_time_lag_buckets``.

    Returns:
      ``[batch, L, L]`` int64: for query ``i < L - 1``,
      ``time_lag_buckets(t[i + 1] - t[j])``; for the last query, whose next behaviour is the
      window's target, ``history_time_lag[j]`` (the same buckets of the gap to the target); 0
      where key ``j`` is later than ``i`` or padding. Left padding does not change the valid
      entries.
    """
    history = tf.cast(features[F.HISTORY], tf.int64)
    times = tf.cast(features[F.HISTORY_TIMESTAMPS], tf.int64)
    gaps = tf.maximum(times[:, 1:, None] - times[:, None, :], 0)         # [batch, L - 1, L]
    buckets = tf.concat([F.time_lag_buckets(gaps, num_buckets),
                         tf.cast(features[F.HISTORY_TIME_LAG], tf.int64)[:, None, :]], axis=1)
    length = tf.shape(history)[1]
    causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
    keep = tf.logical_and(causal[None], tf.not_equal(history, F.PADDING_ID)[:, None, :])
    return tf.where(keep, buckets, tf.zeros_like(buckets))


class HSTU(NextItemModel):
    """HSTU (Zhai et al., 2024) over the behaviour sequence; see the module docstring."""

    def __init__(self, config: HSTUConfig = HSTUConfig(), *, name: str = "hstu", **data):
        super().__init__(config, name=name, **data)
        self.encoder = HSTUEncoder(self.example_spec.positions, config.num_blocks,
                                   config.num_heads, config.linear_dim, config.attention_dim,
                                   config.dropout, config.attention_normalization,
                                   self.example_spec.num_time_lag_buckets if config.time_bias
                                   else 0, config.residual, config.position_origin,
                                   config.relative_position_bias, name="encoder")

    def encode(self, vectors, mask, training):
        if self.config.time_bias:
            raise ValueError("HSTU with time_bias encodes windows (window_states), not vectors")
        return self.encoder(vectors, mask=mask, training=training)

    def window_states(self, features, training):
        if not self.config.time_bias:
            return super().window_states(features, training)
        vectors, mask = self._behaviour_vectors(features[F.HISTORY])
        buckets = next_behaviour_time_buckets(features, self.example_spec.num_time_lag_buckets)
        return self.encoder(vectors, mask=mask, time_buckets=buckets, training=training)
