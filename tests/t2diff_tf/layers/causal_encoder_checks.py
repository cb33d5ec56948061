"""Behaviour every causal sequence encoder keeps (``layer(inputs, mask=...)`` ->
``[batch, L, d]``), shared by the encoders' tests."""

import numpy as np
import tensorflow as tf


def sequences(batch=3, length=7, dim=8):
    """``[3, 7, 8]`` inputs and a left-padded mask: two, none and five padded positions."""
    x = tf.random.normal([batch, length, dim], seed=1)
    mask = tf.constant([[False, False, True, True, True, True, True],
                        [True] * 7,
                        [False] * 5 + [True, True]])
    return x, mask


def assert_position_t_ignores_later_positions(layer):
    x, mask = sequences()
    base = layer(x, mask=mask).numpy()
    changed = tf.concat([x[:, :4], x[:, 4:] + 5.0], axis=1)
    out = layer(changed, mask=mask).numpy()
    np.testing.assert_allclose(out[:, :4], base[:, :4], atol=1e-5)
    assert not np.allclose(out[:, 4:], base[:, 4:])


def assert_padded_positions_do_not_leak_and_are_zero(layer):
    x, mask = sequences()
    base = layer(x, mask=mask).numpy()
    out = layer(tf.where(mask[..., None], x, x + 100.0), mask=mask).numpy()
    valid = mask.numpy()
    np.testing.assert_allclose(out[valid], base[valid], atol=1e-5)
    assert np.all(out[~valid] == 0.0)
