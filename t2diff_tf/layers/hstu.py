"""HSTU blocks: pointwise (SiLU) causal attention with relative position and time biases.

Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", ICML 2024 (the Hierarchical Sequential Transduction Unit). One block
over ``x [batch, L, d]``::

    u, v, q, k = split(SiLU(LN(x) @ W_uvqk))     # u, v: [batch, L, H * linear_dim]
    A = SiLU(q k^T + bias(i, j)) / divisor(i)      # per head: [batch, H, L, L], causal, masked
    x = residual(x) + Dense(Dropout(u * LN(A v)))

The attention weights are not normalised over the keys (no softmax): a position's output grows
with the number of behaviours it attends to, which the paper argues keeps the intensity of a
user's engagement. ``attention_normalization`` chooses the divisor:

* ``"max_length"`` (the reference's): the fixed ``max_length`` (the reference divides by its
  padded length, also fixed);
* ``"visible_keys"`` (the TensorFlow reimplementation's, NetEase-Media/HSTU-Tensorflow, which
  reports it helps on ML-1M): the number of behaviours query ``i`` attends to, ``i``'s valid
  keys ``j <= i``.

Either way a batch trimmed of left padding gives the same outputs as the full-width one.

Positions enter twice in the reference (generative-recommenders): a learned embedding added to
the inputs, counted from the oldest behaviour (``position_origin="first"``), and the relative
bias below. The TensorFlow reimplementation's ML-1M recipe has no relative position bias
(``relative_position_bias=False``) and counts its embedding from the newest behaviour
(``position_origin="last"``: its arrays are left-padded and indexed from 0).

``residual`` chooses what the branch is added to: ``"input"`` (the reference's, ``x``) or
``"normalized_input"`` (the TensorFlow reimplementation's, which normalises its queries in
place and adds the branch to them: ``LN(x)``, the same ``LN`` the branch reads).

The relative bias (shared by the heads, tables per block) is positional, one weight per offset
``i - j``, plus, with ``num_time_buckets``, HSTU's time bias: one weight per bucket of the gap
between query ``i``'s next behaviour and key ``j`` (the caller buckets the gaps; see
:func:`t2diff_tf.models.hstu.next_behaviour_time_buckets`)::

    bias(i, j) = w_position[j - i] + w_time[bucket(t_{i+1} - t_j)]
"""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

from t2diff_tf.layers.causal_transformer import (POSITION_ORIGINS, POSITIONS_FROM_FIRST,
                                                  learned_positions)

MAX_LENGTH = "max_length"
VISIBLE_KEYS = "visible_keys"
ATTENTION_NORMALIZATIONS = (MAX_LENGTH, VISIBLE_KEYS)
INPUT = "input"
NORMALIZED_INPUT = "normalized_input"
RESIDUALS = (INPUT, NORMALIZED_INPUT)


def check_attention_normalization(value: str) -> None:
    """Raises ``ValueError`` unless ``value`` is one of :data:`ATTENTION_NORMALIZATIONS`."""
    if value not in ATTENTION_NORMALIZATIONS:
        raise ValueError(f"attention_normalization must be one of {ATTENTION_NORMALIZATIONS}, "
                         f"got {value!r}")


def check_position_origin(value: str) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``POSITION_ORIGINS``."""
    if value not in POSITION_ORIGINS:
        raise ValueError(f"position_origin must be one of {POSITION_ORIGINS}, got {value!r}")


def check_residual(value: str) -> None:
    """Raises ``ValueError`` unless ``value`` is one of :data:`RESIDUALS`."""
    if value not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {value!r}")


@tf.custom_gradient
def gather_with_dense_gradient(table: tf.Tensor, indices: tf.Tensor):
    """``tf.gather(table, indices)`` whose gradient is the dense ``[num_rows]`` sum per row.

    For a small 1-D table read at many indices (a bias table read at ``[batch, L, L]``).
    ``tf.gather``'s gradient is one sparse entry per index, which the optimizer then
    deduplicates: a sort of ``batch * L * L`` indices per table and step. Summing them into
    the table's rows directly gives the same gradient at a fraction of the cost.

    Args:
      table: ``[num_rows]``.
      indices: any shape, each in ``0..num_rows - 1``.

    Returns:
      ``table[indices]``, shaped as ``indices``.
    """
    def gradient(upstream):
        rows = tf.math.unsorted_segment_sum(tf.reshape(upstream, [-1]),
                                            tf.reshape(indices, [-1]), tf.shape(table)[0])
        return rows, None
    return tf.gather(table, indices), gradient


@tf.keras.utils.register_keras_serializable(package="t2diff")
class RelativePositionBias(tf.keras.layers.Layer):
    """A learned scalar per relative offset: ``bias[i, j] = w[j - i + max_length - 1]``.

    Call arguments:
      length: ``L <= max_length``, a scalar.

    Returns:
      ``[L, L]``; the bias of query ``i`` attending to key ``j``. It depends on ``i - j`` only,
      so it is the same for left-padded and trimmed sequences.
    """

    def __init__(self, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)

    def build(self, input_shape=None):
        self.offsets = self.add_weight(
            name="offsets", shape=[2 * self.max_length - 1],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, length: tf.Tensor) -> tf.Tensor:
        positions = tf.range(length)
        offset = positions[None, :] - positions[:, None] + self.max_length - 1
        return gather_with_dense_gradient(self.offsets, offset)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length}


@tf.keras.utils.register_keras_serializable(package="t2diff")
class RelativeTimeBias(tf.keras.layers.Layer):
    """A learned scalar per time-gap bucket: ``bias[b, i, j] = w[buckets[b, i, j]]``.

    Call arguments:
      buckets: ``[batch, L, L]`` int, each in ``0..num_buckets - 1``.

    Returns:
      ``[batch, L, L]`` float32.
    """

    def __init__(self, num_buckets: int, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = int(num_buckets)

    def build(self, input_shape=None):
        self.buckets = self.add_weight(
            name="buckets", shape=[self.num_buckets],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, buckets: tf.Tensor) -> tf.Tensor:
        return gather_with_dense_gradient(self.buckets, buckets)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "num_buckets": self.num_buckets}


@tf.keras.utils.register_keras_serializable(package="t2diff")
class HSTUEncoder(tf.keras.layers.Layer):
    """Learned positions, then HSTU blocks.

    Args:
      max_length: the longest sequence; the attention's divisor and the tables' size.
      num_blocks: HSTU blocks.
      num_heads: attention heads ``H``.
      linear_dim: per-head width of ``u`` and ``v``.
      attention_dim: per-head width of ``q`` and ``k``.
      dropout: on the inputs and before each block's output projection.
      attention_normalization: ``"max_length"`` or ``"visible_keys"``, the divisor of the
        attention weights (module docstring).
      num_time_buckets: the time bias's buckets; 0: no time bias.
      residual: ``"input"`` or ``"normalized_input"``, what each block's branch is added to
        (module docstring).
      position_origin: ``"first"`` (the oldest behaviour takes the first positional
        embedding) or ``"last"`` (the newest takes the last one).
      relative_position_bias: add each block's learned bias per offset ``j - i``.

    Call arguments:
      inputs: ``[batch, L, d]`` behaviour vectors, left-padded (oldest first), ``L <= max_length``.
      mask: ``[batch, L]`` bool, ``True`` on valid positions.
      time_buckets: ``[batch, L, L]`` int, the bucket of the gap from query ``i``'s next
        behaviour to key ``j``; required with ``num_time_buckets``, else ignored.
      training: enables dropout.

    Returns:
      ``[batch, L, d]``; position ``t`` depends on behaviours ``<= t`` only; padded rows are 0.
    """

    def __init__(self, max_length: int, num_blocks: int = 8, num_heads: int = 2,
                 linear_dim: int = 25, attention_dim: int = 25, dropout: float = 0.2,
                 attention_normalization: str = MAX_LENGTH, num_time_buckets: int = 0,
                 residual: str = INPUT, position_origin: str = POSITIONS_FROM_FIRST,
                 relative_position_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        check_attention_normalization(attention_normalization)
        check_residual(residual)
        check_position_origin(position_origin)
        self.attention_normalization = attention_normalization
        self.residual = residual
        self.position_origin = position_origin
        self.relative_position_bias = bool(relative_position_bias)
        if num_time_buckets < 0:
            raise ValueError(f"num_time_buckets must be >= 0, got {num_time_buckets}")
        self.num_time_buckets = int(num_time_buckets)
        self.max_length = int(max_length)
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.linear_dim = int(linear_dim)
        self.attention_dim = int(attention_dim)
        self.dropout = float(dropout)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        heads, linear, attention = self.num_heads, self.linear_dim, self.attention_dim
        self.positions = self.add_weight(
            name="positions", shape=[self.max_length, dim],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
        self.uvqk = [self.add_weight(
            name=f"uvqk_{i}", shape=[dim, 2 * heads * (linear + attention)],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
            for i in range(self.num_blocks)]
        self.biases = [RelativePositionBias(self.max_length, name=f"relative_bias_{i}")
                       for i in range(self.num_blocks if self.relative_position_bias else 0)]
        self.time_biases = [RelativeTimeBias(self.num_time_buckets, name=f"time_bias_{i}")
                            for i in range(self.num_blocks if self.num_time_buckets else 0)]
        self.input_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-6)
                            for _ in range(self.num_blocks)]
        self.output_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-6)
                             for _ in range(self.num_blocks)]
        self.projections = [tf.keras.layers.Dense(dim, name=f"output_{i}")
                            for i in range(self.num_blocks)]
        self.input_dropout, self.block_dropout = (tf.keras.layers.Dropout(self.dropout)
                                                  for _ in range(2))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: tf.Tensor, time_buckets: tf.Tensor = None,
             training: bool = False) -> tf.Tensor:
        if self.num_time_buckets and time_buckets is None:
            raise ValueError("an HSTUEncoder with num_time_buckets needs time_buckets")
        length = tf.shape(inputs)[1]
        tf.debugging.assert_less_equal(length, self.max_length,
                                       message="sequence longer than max_length")
        keep = tf.cast(mask, inputs.dtype)[..., None]
        x = (inputs + self.position_embeddings(mask, length)) * keep
        x = self.input_dropout(x, training=training)
        causal = tf.linalg.band_part(tf.ones([length, length], inputs.dtype), -1, 0)
        # [batch, 1, L, L]: 1 / divisor where query i may use key j (j <= i, j a behaviour),
        # else 0.
        attend = (causal[None] * tf.cast(mask, inputs.dtype)[:, None, :])[:, None]
        if self.attention_normalization == VISIBLE_KEYS:
            attend /= tf.maximum(tf.reduce_sum(attend, axis=-1, keepdims=True), 1.0)
        else:
            attend /= float(self.max_length)
        for i in range(self.num_blocks):
            normed = self.input_norms[i](x)
            branch = self._block(i, normed, attend, length, time_buckets, training)
            x = ((x if self.residual == INPUT else normed) + branch) * keep
        return x

    def position_embeddings(self, mask: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
        """``[1 or batch, L, d]`` positional embeddings for a left-padded ``[batch, L]`` mask."""
        return learned_positions(self.positions, mask, length, self.position_origin)

    def _block(self, i: int, normed: tf.Tensor, attend: tf.Tensor, length: tf.Tensor,
               time_buckets: tf.Tensor, training: bool) -> tf.Tensor:
        """One HSTU block's residual branch, ``[batch, L, d]``, from ``LN(x)``."""
        heads, linear, attention = self.num_heads, self.linear_dim, self.attention_dim
        batch = tf.shape(normed)[0]
        projected = tf.nn.silu(tf.einsum("bld,de->ble", normed, self.uvqk[i]))
        u, v, q, k = tf.split(projected, [heads * linear, heads * linear,
                                          heads * attention, heads * attention], axis=-1)

        def per_head(t, width):  # [batch, L, H * w] -> [batch, H, L, w]
            return tf.transpose(tf.reshape(t, [batch, length, heads, width]), [0, 2, 1, 3])

        scores = tf.einsum("bhid,bhjd->bhij", per_head(q, attention), per_head(k, attention))
        bias = self.biases[i](length)[None, None] if self.biases else 0.0  # [1, 1, L, L]
        if self.time_biases:
            bias += self.time_biases[i](time_buckets)[:, None]                 # [batch, 1, L, L]
        weights = tf.nn.silu(scores + bias)
        weights = weights * attend
        mixed = tf.einsum("bhij,bhjd->bhid", weights, per_head(v, linear))
        mixed = tf.reshape(tf.transpose(mixed, [0, 2, 1, 3]), [batch, length, heads * linear])
        gated = u * self.output_norms[i](mixed)
        return self.projections[i](self.block_dropout(gated, training=training))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length,
                "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "linear_dim": self.linear_dim, "attention_dim": self.attention_dim,
                "dropout": self.dropout, "attention_normalization": self.attention_normalization,
                "num_time_buckets": self.num_time_buckets, "residual": self.residual,
                "position_origin": self.position_origin,
                "relative_position_bias": self.relative_position_bias}
