"""A causal (left-to-right) Transformer encoder over a behaviour sequence: SASRec's blocks."""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

PRE_NORM = "pre_norm"
SASREC_BLOCK = "sasrec"
BLOCK_STYLES = (PRE_NORM, SASREC_BLOCK)

POSITIONS_FROM_LAST = "last"
POSITIONS_FROM_FIRST = "first"
POSITION_ORIGINS = (POSITIONS_FROM_LAST, POSITIONS_FROM_FIRST)


def index_from_oldest(mask: tf.Tensor) -> tf.Tensor:
    """``[batch, L]`` int32: each valid behaviour's index counted from the sequence's oldest
    one (0, 1, ...) in a left-padded ``[batch, L]`` bool mask; padding takes 0 (callers zero
    it). The same for a row however much left padding it has."""
    return tf.maximum(tf.cumsum(tf.cast(mask, tf.int32), axis=1) - 1, 0)


def learned_positions(table: tf.Tensor, mask: tf.Tensor, length: tf.Tensor,
                      origin: str) -> tf.Tensor:
    """``[1 or batch, L, d]`` rows of a ``[max_length, d]`` positional table for a left-padded
    ``[batch, L]`` mask: the last ``L`` rows (``origin="last"``: the newest behaviour takes the
    last row) or each behaviour's :func:`index_from_oldest` row (``"first"``)."""
    if origin == POSITIONS_FROM_LAST:
        return table[None, -length:, :]
    return tf.gather(table, index_from_oldest(mask))


@tf.keras.utils.register_keras_serializable(package="t2diff")
class CausalTransformer(tf.keras.layers.Layer):
    """Transformer blocks where position ``t`` attends to positions ``<= t`` only.

    Learned positional embeddings are added to the inputs; padded positions are zeroed at every
    block and never attended to, so their values cannot leak into valid positions.

    Two block styles:
      ``"pre_norm"``: ``x += MHA(LN(x)); x += FFN(LN(x))`` with a GELU feed-forward, Keras's
        default (Glorot) initialisation.
      ``"sasrec"``: the block of SASRec's reference code (Kang & McAuley; SASRec+ keeps it):
        ``q = LN(x); x = q + MHA(query=q, key=value=x); x = LN(x); x += FFN(x)``, the residual
        taken from the normalised query, keys and values left raw; a ReLU feed-forward with
        dropout after both of its layers; every kernel drawn from ``N(0, 0.02)``.

    Two position origins (sequences are left-padded, the most recent behaviour last):
      ``"last"``: the most recent behaviour always takes the last positional embedding, so a
        position says how far a behaviour is from the end of the sequence.
      ``"first"``: the oldest behaviour in the sequence takes the first one, as in SASRec's
        reference code (its sequences are right-padded and indexed from 0), so a position says
        how many behaviours precede it in the (possibly truncated) sequence.

    Call arguments:
      inputs: ``[batch, L, d]`` behaviour vectors (oldest first), ``L <= max_length``.
      mask: ``[batch, L]`` bool, ``True`` on valid positions.
      training: enables dropout.

    Returns:
      ``[batch, L, d]``; position ``t`` summarises behaviours ``<= t``.
    """

    def __init__(self, max_length: int, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, block: str = PRE_NORM,
                 position_origin: str = POSITIONS_FROM_LAST, **kwargs):
        super().__init__(**kwargs)
        if block not in BLOCK_STYLES:
            raise ValueError(f"block must be one of {BLOCK_STYLES}, got {block!r}")
        if position_origin not in POSITION_ORIGINS:
            raise ValueError(
                f"position_origin must be one of {POSITION_ORIGINS}, got {position_origin!r}")
        self.max_length = int(max_length)
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.block = block
        self.position_origin = position_origin

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.positions = self.add_weight(
            name="positions", shape=[self.max_length, dim],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
        reference = self.block == SASREC_BLOCK

        def kernels():
            # A fresh initializer per kernel: one unseeded Keras initializer instance returns the
            # same values on every call, so a shared one would start every same-shaped kernel
            # (both FFN layers of every block) equal.
            return (tf.keras.initializers.RandomNormal(stddev=0.02) if reference
                    else "glorot_uniform")

        self.attention = [tf.keras.layers.MultiHeadAttention(
            self.num_heads, max(1, dim // self.num_heads), dropout=self.dropout,
            kernel_initializer=kernels(), name=f"attention_{i}") for i in range(self.num_blocks)]
        self.attention_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-6)
                                for _ in range(self.num_blocks)]
        self.ffn = [tf.keras.Sequential(
            [tf.keras.layers.Dense(dim, activation="relu" if reference else "gelu",
                                   kernel_initializer=kernels()),
             tf.keras.layers.Dropout(self.dropout),
             tf.keras.layers.Dense(dim, kernel_initializer=kernels())]
            + ([tf.keras.layers.Dropout(self.dropout)] if reference else []),
            name=f"ffn_{i}") for i in range(self.num_blocks)]
        self.ffn_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-6)
                          for _ in range(self.num_blocks)]
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        length = tf.shape(inputs)[1]
        tf.debugging.assert_less_equal(length, self.max_length,
                                       message="sequence longer than max_length")
        keep = tf.cast(mask, inputs.dtype)[..., None]
        x = (inputs + self.position_embeddings(mask, length)) * keep
        x = self.input_dropout(x, training=training)
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        attend = tf.logical_and(causal[None], mask[:, None, :])
        # A padded query row would attend to nothing (NaN softmax): let it see itself.
        attend = tf.logical_or(attend, tf.eye(length, dtype=tf.bool)[None])
        for attention, a_norm, ffn, f_norm in zip(self.attention, self.attention_norms,
                                                 self.ffn, self.ffn_norms):
            h = a_norm(x)
            if self.block == SASREC_BLOCK:
                x = h + attention(h, x, key=x, attention_mask=attend, training=training)
                x = f_norm(x)
                x = (x + ffn(x, training=training)) * keep
            else:
                x = x + attention(h, h, attention_mask=attend, training=training)
                x = (x + ffn(f_norm(x), training=training)) * keep
        return self.final_norm(x) * keep

    def position_embeddings(self, mask: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
        """``[1 or batch, L, d]`` positional embeddings for a left-padded ``[batch, L]`` mask."""
        return learned_positions(self.positions, mask, length, self.position_origin)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length,
                "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "dropout": self.dropout, "block": self.block,
                "position_origin": self.position_origin}
