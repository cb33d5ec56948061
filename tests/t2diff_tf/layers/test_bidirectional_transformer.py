"""The bidirectional Transformer encoder (BERT4Rec's): every position sees both sides, padding
does not leak and is zero, serialisation."""

import numpy as np
import tensorflow as tf

from t2diff_tf.layers.bidirectional_transformer import BidirectionalTransformer


def _layer_inputs():
    x = tf.random.normal([2, 5, 8], seed=1)
    mask = tf.constant([[False, False, True, True, True], [True] * 5])
    return x, mask


def test_encoder_is_bidirectional():
    layer = BidirectionalTransformer(max_length=5, num_blocks=2, num_heads=2, dropout=0.0)
    x, mask = _layer_inputs()
    base = layer(x, mask=mask).numpy()
    # Only the last position changes (not by a constant: the input LayerNorm removes those).
    changed = tf.concat([x[:, :4], tf.random.normal([2, 1, 8], seed=2)], axis=1)
    out = layer(changed, mask=mask).numpy()
    assert not np.allclose(out[:, 2:4], base[:, 2:4], atol=1e-4)


def test_encoder_padding_does_not_leak_and_is_zero():
    layer = BidirectionalTransformer(max_length=5, num_blocks=2, dropout=0.0)
    x, mask = _layer_inputs()
    base = layer(x, mask=mask).numpy()
    out = layer(tf.where(mask[..., None], x, x + 100.0), mask=mask).numpy()
    valid = mask.numpy()
    np.testing.assert_allclose(out[valid], base[valid], atol=1e-5)
    assert np.all(out[~valid] == 0.0)


def test_encoder_config_round_trip():
    layer = BidirectionalTransformer(max_length=7, num_blocks=3, num_heads=2, dropout=0.3,
                                     feedforward_multiplier=2)
    clone = BidirectionalTransformer.from_config(layer.get_config())
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.dropout,
            clone.feedforward_multiplier) == (7, 3, 2, 0.3, 2)
