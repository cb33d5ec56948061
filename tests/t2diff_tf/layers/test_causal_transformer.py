"""CausalTransformer: causality, masking and serialisation."""

import numpy as np
import tensorflow as tf

from t2diff_tf.layers.causal_transformer import CausalTransformer


def _inputs(batch=3, length=7, dim=8):
    x = tf.random.normal([batch, length, dim], seed=1)
    mask = tf.constant([[False, False, True, True, True, True, True],
                        [True] * 7,
                        [False] * 5 + [True, True]])
    return x, mask


def test_position_t_ignores_later_positions():
    layer = CausalTransformer(max_length=7, num_blocks=2, num_heads=2, dropout=0.0)
    x, mask = _inputs()
    base = layer(x, mask=mask).numpy()
    changed = tf.concat([x[:, :4], x[:, 4:] + 5.0], axis=1)
    out = layer(changed, mask=mask).numpy()
    np.testing.assert_allclose(out[:, :4], base[:, :4], atol=1e-5)
    assert not np.allclose(out[:, 4:], base[:, 4:])


def test_padded_positions_do_not_leak_and_are_zero():
    layer = CausalTransformer(max_length=7, num_blocks=2, dropout=0.0)
    x, mask = _inputs()
    base = layer(x, mask=mask).numpy()
    noisy = tf.where(mask[..., None], x, x + 100.0)
    out = layer(noisy, mask=mask).numpy()
    valid = mask.numpy()
    np.testing.assert_allclose(out[valid], base[valid], atol=1e-5)
    assert np.all(out[~valid] == 0.0)


def test_config_round_trip():
    layer = CausalTransformer(max_length=7, num_blocks=3, num_heads=2, dropout=0.1)
    clone = CausalTransformer.from_config(layer.get_config())
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.dropout) == (7, 3, 2, 0.1)
