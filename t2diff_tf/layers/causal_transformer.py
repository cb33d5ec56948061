"""A causal (left-to-right) Transformer encoder over a behaviour sequence: SASRec's blocks."""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="t2diff")
class CausalTransformer(tf.keras.layers.Layer):
    """Pre-norm Transformer blocks where position ``t`` attends to positions ``<= t`` only.

    Learned positional embeddings are added to the inputs; padded positions are zeroed at every
    block and never attended to, so their values cannot leak into valid positions.

    Call arguments:
      inputs: ``[batch, L, d]`` behaviour vectors (oldest first).
      mask: ``[batch, L]`` bool, ``True`` on valid positions.
      training: enables dropout.

    Returns:
      ``[batch, L, d]``; position ``t`` summarises behaviours ``<= t``.
    """

    def __init__(self, max_length: int, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.positions = self.add_weight(
            name="positions", shape=[self.max_length, dim],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
        self.attention = [tf.keras.layers.MultiHeadAttention(
            self.num_heads, max(1, dim // self.num_heads), dropout=self.dropout,
            name=f"attention_{i}") for i in range(self.num_blocks)]
        self.attention_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-6)
                                for _ in range(self.num_blocks)]
        self.ffn = [tf.keras.Sequential([tf.keras.layers.Dense(dim, activation="gelu"),
                                         tf.keras.layers.Dropout(self.dropout),
                                         tf.keras.layers.Dense(dim)], name=f"ffn_{i}")
                    for i in range(self.num_blocks)]
        self.ffn_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-6)
                          for _ in range(self.num_blocks)]
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        length = tf.shape(inputs)[1]
        keep = tf.cast(mask, inputs.dtype)[..., None]
        x = (inputs + self.positions[None, -length:, :]) * keep
        x = self.input_dropout(x, training=training)
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        attend = tf.logical_and(causal[None], mask[:, None, :])
        # A padded query row would attend to nothing (NaN softmax): let it see itself.
        attend = tf.logical_or(attend, tf.eye(length, dtype=tf.bool)[None])
        for attention, a_norm, ffn, f_norm in zip(self.attention, self.attention_norms,
                                                 self.ffn, self.ffn_norms):
            h = a_norm(x)
            x = x + attention(h, h, attention_mask=attend, training=training)
            x = (x + ffn(f_norm(x), training=training)) * keep
        return self.final_norm(x) * keep

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length,
                "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "dropout": self.dropout}
