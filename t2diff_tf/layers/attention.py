"""Mixed attention of T2Diff's user tower (paper Section 4.3).

* :class:`SessionEncoder` -- a Transformer encoder over the session behaviours followed by the
  generated next behaviour ``x_hat`` (``concat([X_session, x_hat])``), mean-pooled over the valid
  positions: ``h_s``.
* :class:`TargetAttention` -- DIN-style attention of ``h_s`` over the long-term history: each
  behaviour ``x_j`` scores ``MLP([x_j, x_j - h_s, x_j * h_s, h_s, lag_j])``, the scores are
  soft-maxed over the valid positions (padding gets exactly zero weight), ``h_l = sum_j a_j x_j``.

Both take left-padded sequences with a ``[batch, n]`` mask; values at padded positions never
reach the outputs.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over valid positions: ``[batch, n, d]``, ``[batch, n]`` -> ``[batch, d]``.

    Zero for a row without valid positions."""
    valid = tf.cast(mask, tf.bool)[:, :, None]
    total = tf.reduce_sum(tf.where(valid, values, tf.zeros_like(values)), axis=1)
    count = tf.reduce_sum(tf.cast(valid, values.dtype), axis=1)
    return total / tf.maximum(count, 1.0)


def masked_softmax(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis restricted to ``mask``: masked entries are exactly 0, and a row
    without any valid entry is all 0. ``[batch, n]`` -> ``[batch, n]``."""
    mask = tf.cast(mask, tf.bool)
    very_negative = tf.constant(-1e9, logits.dtype)
    weights = tf.nn.softmax(tf.where(mask, logits, very_negative), axis=-1)
    weights = weights * tf.cast(mask, logits.dtype)
    return tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=-1, keepdims=True))


@tf.keras.utils.register_keras_serializable(package="t2diff")
class SessionEncoder(tf.keras.layers.Layer):
    """Pre-norm Transformer encoder with right-aligned learned positions and masked mean pooling.

    Positions are counted from the end of the sequence (the most recent behaviour is position 0),
    so left padding does not shift them.

    Call arguments:
      inputs: ``[batch, n, d]``.
      mask: ``[batch, n]``, ``True`` at valid positions; ``None``: all valid.
      training: enables dropout.

    Returns:
      ``[batch, d]`` (``h_s``); with ``return_sequence=True`` in the call, also ``[batch, n, d]``.
    """

    def __init__(self, num_layers: int = 1, num_heads: int = 2,
                 feedforward_dim: Optional[int] = None, dropout: float = 0.1,
                 max_positions: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.feedforward_dim = feedforward_dim
        self.dropout = dropout
        self.max_positions = max_positions

    def build(self, input_shape):
        d = int(input_shape[-1])
        ffn = self.feedforward_dim or 2 * d
        self._positions = self.add_weight(
            name="position_embeddings", shape=[self.max_positions, d],
            initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02))
        self._attention = []
        self._feedforward = []
        self._norms = []
        for i in range(self.num_layers):
            self._attention.append(tf.keras.layers.MultiHeadAttention(
                self.num_heads, key_dim=max(1, d // self.num_heads), dropout=self.dropout,
                name=f"attention_{i}"))
            self._feedforward.append(tf.keras.Sequential([
                tf.keras.layers.Dense(ffn, activation="gelu"),
                tf.keras.layers.Dropout(self.dropout),
                tf.keras.layers.Dense(d),
            ], name=f"feedforward_{i}"))
            self._norms.append((tf.keras.layers.LayerNormalization(name=f"norm_attention_{i}"),
                                tf.keras.layers.LayerNormalization(name=f"norm_feedforward_{i}")))
        self._final_norm = tf.keras.layers.LayerNormalization(name="final_norm")
        self._dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None,
             training: Optional[bool] = None, return_sequence: bool = False
             ) -> Union[tf.Tensor, Tuple[tf.Tensor, tf.Tensor]]:
        n = tf.shape(inputs)[1]
        if mask is None:
            mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
        mask = tf.cast(mask, tf.bool)
        tf.debugging.assert_less_equal(n, self.max_positions,
                                       message="sequence longer than max_positions")
        positions = tf.gather(self._positions, tf.range(n - 1, -1, -1))
        h = inputs + positions[None]
        h = self._dropout(h, training=training)
        # Every query attends to the valid keys only.
        attention_mask = tf.logical_and(tf.ones_like(mask)[:, :, None], mask[:, None, :])
        for attention, feedforward, (norm_a, norm_f) in zip(
                self._attention, self._feedforward, self._norms):
            x = norm_a(h)
            h = h + self._dropout(attention(x, x, attention_mask=attention_mask,
                                            training=training), training=training)
            h = h + self._dropout(feedforward(norm_f(h), training=training), training=training)
        h = self._final_norm(h)
        pooled = masked_mean(h, mask)
        if return_sequence:
            return pooled, h
        return pooled

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(num_layers=self.num_layers, num_heads=self.num_heads,
                      feedforward_dim=self.feedforward_dim, dropout=self.dropout,
                      max_positions=self.max_positions)
        return config


@tf.keras.utils.register_keras_serializable(package="t2diff")
class TargetAttention(tf.keras.layers.Layer):
    """DIN target attention of a query over a behaviour sequence.

    Call arguments:
      inputs: behaviours ``[batch, n, d]``.
      query: ``[batch, d]`` (T2Diff: ``h_s``).
      mask: ``[batch, n]``, ``True`` at valid positions; ``None``: all valid.
      time_lag: ``[batch, n]`` int bucket ids (``< num_time_lag_buckets``); ignored when the layer
        has no time-lag embedding (``num_time_lag_buckets=0``).
      return_weights: also return the attention weights ``[batch, n]``.

    Returns:
      ``[batch, d]`` (``h_l = sum_j a_j x_j``; zero when no position is valid).
    """

    def __init__(self, hidden_units: Sequence[int] = (64, 32), activation: str = "swish",
                 num_time_lag_buckets: int = 0, time_lag_dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.num_time_lag_buckets = int(num_time_lag_buckets)
        self.time_lag_dim = int(time_lag_dim)

    def build(self, input_shape):
        self._scorer = tf.keras.Sequential(
            [tf.keras.layers.Dense(u, activation=self.activation) for u in self.hidden_units]
            + [tf.keras.layers.Dense(1)], name="scorer")
        if self.num_time_lag_buckets > 0:
            self._time_lag_embedding = tf.keras.layers.Embedding(
                self.num_time_lag_buckets, self.time_lag_dim, name="time_lag_embedding")
        else:
            self._time_lag_embedding = None
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, query: tf.Tensor, mask: Optional[tf.Tensor] = None,
             time_lag: Optional[tf.Tensor] = None, return_weights: bool = False):
        if mask is None:
            mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
        q = tf.broadcast_to(query[:, None, :], tf.shape(inputs))
        parts = [inputs, inputs - q, inputs * q, q]
        if self._time_lag_embedding is not None:
            if time_lag is None:
                raise ValueError("this TargetAttention has a time-lag embedding: pass time_lag")
            lag = tf.clip_by_value(tf.cast(time_lag, tf.int32), 0, self.num_time_lag_buckets - 1)
            parts.append(self._time_lag_embedding(lag))
        logits = tf.squeeze(self._scorer(tf.concat(parts, axis=-1)), axis=-1)
        weights = masked_softmax(logits, mask)
        # Zero the padded behaviours too (``where``, not a product: 0 * inf is NaN).
        values = tf.where(tf.cast(mask, tf.bool)[:, :, None], inputs, tf.zeros_like(inputs))
        pooled = tf.einsum("bn,bnd->bd", weights, values)
        if return_weights:
            return pooled, weights
        return pooled

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), activation=self.activation,
                      num_time_lag_buckets=self.num_time_lag_buckets,
                      time_lag_dim=self.time_lag_dim)
        return config
