"""A bidirectional Transformer encoder over a behaviour sequence: BERT4Rec's blocks.

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from
Transformer", CIKM 2019, Section 3.3: learned positional embeddings added to the item vectors,
then ``num_blocks`` post-norm Transformer layers (``LN(x + Dropout(MH(x)))``, then
``LN(x + Dropout(PFFN(x)))`` with a GELU feed-forward of inner width ``4 d``). Every position
attends to every *valid* position, before and after it (no causal mask).

As in the BERT code BERT4Rec builds on, the input embeddings are layer-normalised and dropped out
before the first block.
"""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="t2diff")
class BidirectionalTransformer(tf.keras.layers.Layer):
    """Post-norm Transformer blocks where every position attends to every valid position.

    Positions are right-aligned, like the left padding: the last position of a sequence always
    gets the last of the ``max_length`` positional embeddings, whatever its length. Padded positions
    are never attended to (they are masked out of the attention keys) and are zero in the output,
    so their input values cannot reach the valid positions.

    Call arguments:
      inputs: ``[batch, L, d]`` behaviour vectors (oldest first, left-padded),
        ``L <= max_length``.
      mask: ``[batch, L]`` bool, ``True`` on valid positions.
      training: enables dropout.

    Returns:
      ``[batch, L, d]``; position ``t`` summarises every valid position of its row.
    """

    def __init__(self, max_length: int, num_blocks: int = 2, num_heads: int = 2,
                 dropout: float = 0.1, feedforward_multiplier: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.feedforward_multiplier = int(feedforward_multiplier)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.positions = self.add_weight(
            name="positions", shape=[self.max_length, dim],
            initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02))
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=1e-12, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)
        self.attention = [tf.keras.layers.MultiHeadAttention(
            self.num_heads, max(1, dim // self.num_heads), dropout=self.dropout,
            name=f"attention_{i}") for i in range(self.num_blocks)]
        self.attention_dropouts = [tf.keras.layers.Dropout(self.dropout)
                                   for _ in range(self.num_blocks)]
        self.attention_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-12,
                                                                   name=f"attention_norm_{i}")
                                for i in range(self.num_blocks)]
        self.ffn = [tf.keras.Sequential([
            tf.keras.layers.Dense(self.feedforward_multiplier * dim, activation="gelu"),
            tf.keras.layers.Dense(dim),
            tf.keras.layers.Dropout(self.dropout),
        ], name=f"ffn_{i}") for i in range(self.num_blocks)]
        self.ffn_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-12, name=f"ffn_norm_{i}")
                          for i in range(self.num_blocks)]
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        length = tf.shape(inputs)[1]
        tf.debugging.assert_less_equal(length, self.max_length,
                                       message="sequence longer than max_length")
        mask = tf.cast(mask, tf.bool)
        keep = tf.cast(mask, inputs.dtype)[..., None]
        x = self.input_norm(inputs + self.positions[None, -length:, :])
        x = self.input_dropout(x, training=training) * keep
        # Every query sees the valid keys; a padded query also sees itself, so that its softmax
        # is defined even in an all-padding row (its output is zeroed anyway).
        attend = tf.logical_or(tf.logical_and(tf.ones_like(mask)[:, :, None], mask[:, None, :]),
                               tf.eye(length, dtype=tf.bool)[None])
        for attention, a_drop, a_norm, ffn, f_norm in zip(
                self.attention, self.attention_dropouts, self.attention_norms, self.ffn,
                self.ffn_norms):
            attended = attention(x, x, attention_mask=attend, training=training)
            x = a_norm(x + a_drop(attended, training=training))
            x = f_norm(x + ffn(x, training=training)) * keep
        return x

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length,
                "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "dropout": self.dropout, "feedforward_multiplier": self.feedforward_multiplier}
