"""Stochastic self-attention: Wasserstein attention between diagonal Gaussians (STOSA).

Fan, Liu, Wang, Wang, Yu & Wu, "Sequential Recommendation via Stochastic Self-Attention",
WWW 2022 (Section 4).

Every position carries a diagonal Gaussian ``N(mu, diag(Sigma))`` as two ``[batch, L, d]``
streams, a mean and a (positive) covariance. Between diagonal Gaussians the squared 2-Wasserstein
distance has the closed form

    ``W2^2(N1, N2) = ||mu1 - mu2||^2 + ||Sigma1^(1/2) - Sigma2^(1/2)||^2``

(:func:`squared_wasserstein`, :func:`pairwise_squared_wasserstein`).

* :class:`WassersteinAttention` -- one stochastic self-attention layer: mean and covariance
  queries/keys/values from separate projections (covariance ones through ``ELU(.) + 1``, so they
  stay positive), scores ``-W2^2(query_t, key_s) / sqrt(d_head)``, a softmax over the allowed
  keys, the mean context ``sum_s a_ts V^mu_s`` and the covariance context
  ``sum_s a_ts^2 V^Sigma_s`` (the covariance of a weighted sum of independent Gaussians), then an
  output projection per stream.
* :class:`StochasticTransformer` -- STOSA's encoder: learned (right-aligned) positional
  embeddings for both streams, ``E^mu = LayerNorm(m + p^mu)`` and
  ``E^Sigma = ELU(LayerNorm(s + p^Sigma)) + 1``, then post-norm blocks (residual + LayerNorm
  after the attention and after a position-wise feed-forward network per stream, the covariance
  stream leaving each block through ``ELU(.) + 1``), causal and padding masks.

The authors' code uses the squared distance ``W2^2`` (not its square root) both in the attention
and in the scores; so do these layers.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import tensorflow as tf

# Clamp before a square root so that its gradient stays finite.
_MIN_COVARIANCE = 1e-12


def positive_covariance(x: tf.Tensor) -> tf.Tensor:
    """``ELU(x) + 1`` (> 0): STOSA's map from unconstrained values to diagonal covariances."""
    return tf.nn.elu(x) + 1.0


def covariance_sqrt(covariance: tf.Tensor) -> tf.Tensor:
    """``Sigma^(1/2)`` of a diagonal covariance (clamped away from 0 for finite gradients)."""
    return tf.sqrt(tf.maximum(covariance, _MIN_COVARIANCE))


def squared_wasserstein(mean1: tf.Tensor, covariance1: tf.Tensor, mean2: tf.Tensor,
                        covariance2: tf.Tensor) -> tf.Tensor:
    """``W2^2`` between diagonal Gaussians, broadcast over the leading axes.

    Args:
      mean1, covariance1, mean2, covariance2: ``[..., d]`` (covariances > 0), broadcastable.

    Returns:
      ``[...]``: ``||mu1 - mu2||^2 + ||Sigma1^(1/2) - Sigma2^(1/2)||^2``.
    """
    root = covariance_sqrt(covariance1) - covariance_sqrt(covariance2)
    return tf.reduce_sum(tf.square(mean1 - mean2), -1) + tf.reduce_sum(tf.square(root), -1)


def pairwise_squared_wasserstein(mean1: tf.Tensor, covariance1: tf.Tensor, mean2: tf.Tensor,
                                 covariance2: tf.Tensor) -> tf.Tensor:
    """``W2^2`` between every row of the first and every row of the second set, by matmuls.

    Args:
      mean1, covariance1: ``[..., n, d]``.
      mean2, covariance2: ``[..., m, d]``.

    Returns:
      ``[..., n, m]`` (clipped at 0 against round-off).
    """
    root1, root2 = covariance_sqrt(covariance1), covariance_sqrt(covariance2)
    squares1 = tf.reduce_sum(tf.square(mean1) + tf.square(root1), -1)[..., :, None]
    squares2 = tf.reduce_sum(tf.square(mean2) + tf.square(root2), -1)[..., None, :]
    cross = tf.matmul(mean1, mean2, transpose_b=True) + tf.matmul(root1, root2, transpose_b=True)
    return tf.maximum(squares1 + squares2 - 2.0 * cross, 0.0)


@tf.keras.utils.register_keras_serializable(package="t2diff")
class WassersteinAttention(tf.keras.layers.Layer):
    """Multi-head stochastic self-attention (see the module docstring).

    With ``h = num_heads`` heads of width ``d_head = d / h``, for each head:
    ``score_ts = -W2^2(N(Q^mu_t, Q^Sigma_t), N(K^mu_s, K^Sigma_s)) / sqrt(d_head)``,
    ``a_t = softmax_s(score_ts)`` over the keys allowed by ``attention_mask``,
    ``Z^mu_t = sum_s a_ts V^mu_s`` and ``Z^Sigma_t = sum_s a_ts^2 V^Sigma_s``; the heads are
    concatenated and each stream goes through its own output ``Dense(d)``.

    Call arguments:
      mean: ``[batch, L, d]`` mean stream.
      covariance: ``[batch, L, d]`` covariance stream (any sign: the covariance projections apply
        ``ELU(.) + 1``).
      attention_mask: ``[batch, L, L]`` bool, ``True`` where query ``t`` may attend to key ``s``;
        ``None``: everything. A row without any allowed key gets all-zero weights.
      training: enables the attention dropout.
      return_scores: also return the scores and the weights.

    Returns:
      ``(mean [batch, L, d], covariance [batch, L, d])`` after the output projections; with
      ``return_scores``, also the raw scores ``[batch, h, L, L]`` (``-W2^2 / sqrt(d_head)``
      before masking) and the attention weights ``[batch, h, L, L]`` (exactly 0 on masked
      keys).
    """

    def __init__(self, num_heads: int = 1, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.num_heads:
            raise ValueError(f"the width {dim} is not a multiple of num_heads {self.num_heads}")
        self.head_dim = dim // self.num_heads
        names = ("mean_query", "mean_key", "mean_value",
                 "covariance_query", "covariance_key", "covariance_value",
                 "mean_output", "covariance_output")
        for name in names:
            layer = tf.keras.layers.Dense(dim, name=name)
            layer.build(input_shape)
            setattr(self, name, layer)
        self.attention_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def _heads(self, x: tf.Tensor) -> tf.Tensor:
        """``[batch, L, h * d_head]`` -> ``[batch, h, L, d_head]``."""
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def _merge(self, x: tf.Tensor) -> tf.Tensor:
        """``[batch, h, L, d_head]`` -> ``[batch, L, h * d_head]``."""
        shape = tf.shape(x)
        x = tf.transpose(x, [0, 2, 1, 3])
        return tf.reshape(x, [shape[0], shape[2], self.num_heads * self.head_dim])

    def call(self, mean: tf.Tensor, covariance: tf.Tensor,
             attention_mask: Optional[tf.Tensor] = None, training: Optional[bool] = None,
             return_scores: bool = False
             ) -> Union[Tuple[tf.Tensor, tf.Tensor],
                        Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]]:
        query_mean = self._heads(self.mean_query(mean))
        key_mean = self._heads(self.mean_key(mean))
        value_mean = self._heads(self.mean_value(mean))
        query_cov = self._heads(positive_covariance(self.covariance_query(covariance)))
        key_cov = self._heads(positive_covariance(self.covariance_key(covariance)))
        value_cov = self._heads(positive_covariance(self.covariance_value(covariance)))

        scores = -pairwise_squared_wasserstein(query_mean, query_cov, key_mean, key_cov)
        scores = scores / math.sqrt(self.head_dim)  # [batch, h, L, L]
        if attention_mask is None:
            allowed = tf.ones_like(scores, dtype=tf.bool)
        else:
            allowed = tf.broadcast_to(tf.cast(attention_mask, tf.bool)[:, None],
                                      tf.shape(scores))
        weights = tf.nn.softmax(tf.where(allowed, scores, tf.constant(-1e9, scores.dtype)),
                                axis=-1)
        weights = tf.where(allowed, weights, tf.zeros_like(weights))
        dropped = self.attention_dropout(weights, training=training)

        context_mean = self._merge(tf.matmul(dropped, value_mean))
        context_cov = self._merge(tf.matmul(tf.square(dropped), value_cov))
        outputs = (self.mean_output(context_mean), self.covariance_output(context_cov))
        if return_scores:
            return outputs + (scores, weights)
        return outputs

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}


@tf.keras.utils.register_keras_serializable(package="t2diff")
class StochasticTransformer(tf.keras.layers.Layer):
    """STOSA's causal encoder over a sequence of item Gaussians (see the module docstring).

    Positions are right-aligned (the most recent behaviour always gets the last positional
    embedding), keys at padded positions are never attended to and position ``t`` attends to
    ``<= t`` only, so left padding changes nothing at the valid positions. Outputs at padded
    positions are set to the standard normal (mean 0, covariance 1).

    Call arguments:
      mean: ``[batch, L, d]`` item mean embeddings (oldest first).
      covariance: ``[batch, L, d]`` unconstrained item covariance embeddings (before
        ``ELU + 1``).
      mask: ``[batch, L]`` bool, ``True`` on valid positions.
      training: enables dropout.

    Returns:
      ``(mean [batch, L, d], covariance [batch, L, d] > 0)``: position ``t``'s Gaussian
      summarises behaviours ``<= t``.
    """

    def __init__(self, max_length: int, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, attention_dropout: float = 0.0,
                 activation: str = "gelu", **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.activation = activation

    def build(self, input_shape):
        dim = int(input_shape[-1])

        def init():
            # One unseeded initializer instance repeats its values on every call: one per table,
            # or the mean and covariance positions would start equal.
            return tf.keras.initializers.RandomNormal(stddev=0.02)

        self.mean_positions = self.add_weight(name="mean_positions",
                                              shape=[self.max_length, dim], initializer=init())
        self.covariance_positions = self.add_weight(name="covariance_positions",
                                                    shape=[self.max_length, dim],
                                                    initializer=init())

        def norm(name):
            return tf.keras.layers.LayerNormalization(epsilon=1e-12, name=name)

        def ffn(name):
            return tf.keras.Sequential([tf.keras.layers.Dense(dim, activation=self.activation),
                                        tf.keras.layers.Dropout(self.dropout),
                                        tf.keras.layers.Dense(dim)], name=name)

        self.mean_input_norm = norm("mean_input_norm")
        self.covariance_input_norm = norm("covariance_input_norm")
        self.attention = [WassersteinAttention(self.num_heads, self.attention_dropout,
                                               name=f"attention_{i}")
                          for i in range(self.num_blocks)]
        self.mean_attention_norms = [norm(f"mean_attention_norm_{i}")
                                     for i in range(self.num_blocks)]
        self.covariance_attention_norms = [norm(f"covariance_attention_norm_{i}")
                                           for i in range(self.num_blocks)]
        self.mean_ffn = [ffn(f"mean_ffn_{i}") for i in range(self.num_blocks)]
        self.covariance_ffn = [ffn(f"covariance_ffn_{i}") for i in range(self.num_blocks)]
        self.mean_ffn_norms = [norm(f"mean_ffn_norm_{i}") for i in range(self.num_blocks)]
        self.covariance_ffn_norms = [norm(f"covariance_ffn_norm_{i}")
                                     for i in range(self.num_blocks)]
        self.hidden_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, mean: tf.Tensor, covariance: tf.Tensor, mask: tf.Tensor,
             training: Optional[bool] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        length = tf.shape(mean)[1]
        tf.debugging.assert_less_equal(length, self.max_length,
                                       message="sequence longer than max_length")
        mask = tf.cast(mask, tf.bool)
        keep = mask[..., None]
        # Padded inputs are replaced by zeros, so the padding row of an embedding table is inert.
        mean = tf.where(keep, mean, tf.zeros_like(mean))
        covariance = tf.where(keep, covariance, tf.zeros_like(covariance))
        mean = self.mean_input_norm(mean + self.mean_positions[None, -length:, :])
        mean = self.hidden_dropout(mean, training=training)
        covariance = self.covariance_input_norm(
            covariance + self.covariance_positions[None, -length:, :])
        covariance = positive_covariance(self.hidden_dropout(covariance, training=training))

        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        attend = tf.logical_and(causal[None], mask[:, None, :])
        # A padded query would attend to nothing: let it see itself (its output is discarded).
        attend = tf.logical_or(attend, tf.eye(length, dtype=tf.bool)[None])
        for i in range(self.num_blocks):
            context_mean, context_cov = self.attention[i](mean, covariance, attend,
                                                          training=training)
            mean = self.mean_attention_norms[i](
                mean + self.hidden_dropout(context_mean, training=training))
            covariance = self.covariance_attention_norms[i](
                covariance + self.hidden_dropout(context_cov, training=training))
            mean = self.mean_ffn_norms[i](
                mean + self.hidden_dropout(self.mean_ffn[i](mean, training=training),
                                           training=training))
            covariance = positive_covariance(self.covariance_ffn_norms[i](
                covariance + self.hidden_dropout(self.covariance_ffn[i](covariance,
                                                                        training=training),
                                                 training=training)))
        mean = tf.where(keep, mean, tf.zeros_like(mean))
        covariance = tf.where(keep, covariance, tf.ones_like(covariance))
        return mean, covariance

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length,
                "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "dropout": self.dropout, "attention_dropout": self.attention_dropout,
                "activation": self.activation}
