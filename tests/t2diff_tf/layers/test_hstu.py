"""HSTU blocks: the block's closed form, causality, masking, trimming and serialisation."""

import numpy as np
import tensorflow as tf

from t2diff_tf.layers.hstu import HSTUEncoder, RelativePositionBias
from tests.t2diff_tf.layers.causal_encoder_checks import (
    assert_padded_positions_do_not_leak_and_are_zero, assert_position_t_ignores_later_positions,
    sequences)


def _layer_norm(x, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def test_relative_bias_depends_on_the_offset_only():
    bias = RelativePositionBias(max_length=5)
    bias.build()
    bias.offsets.assign(np.arange(9, dtype=np.float32))
    table = bias(tf.constant(4)).numpy()
    # bias[i, j] = w[j - i + 4]
    np.testing.assert_array_equal(table, [[4, 5, 6, 7], [3, 4, 5, 6], [2, 3, 4, 5],
                                          [1, 2, 3, 4]])


def test_one_block_matches_its_closed_form():
    """One block, two heads, all valid: the numpy formula of the module docstring."""
    tf.keras.utils.set_random_seed(0)
    length, dim, heads, lin, att, max_length = 5, 6, 2, 3, 2, 9
    layer = HSTUEncoder(max_length, num_blocks=1, num_heads=heads, linear_dim=lin,
                        attention_dim=att, dropout=0.0)
    x = np.random.default_rng(0).normal(size=[2, length, dim]).astype(np.float32)
    mask = np.ones([2, length], bool)
    out = layer(tf.constant(x), mask=tf.constant(mask)).numpy()

    h = x + layer.positions.numpy()[:length]
    uvqk = _silu(_layer_norm(h) @ layer.uvqk[0].numpy())
    u, v = uvqk[..., :heads * lin], uvqk[..., heads * lin:2 * heads * lin]
    q, k = uvqk[..., 2 * heads * lin:2 * heads * lin + heads * att], uvqk[..., -heads * att:]
    w = layer.biases[0].offsets.numpy()
    bias = np.array([[w[j - i + max_length - 1] for j in range(length)] for i in range(length)])
    causal = np.tril(np.ones([length, length]))
    mixed = np.zeros([2, length, heads * lin], np.float32)
    for head in range(heads):
        qh, kh = q[..., head * att:(head + 1) * att], k[..., head * att:(head + 1) * att]
        a = _silu(qh @ kh.transpose(0, 2, 1) + bias) / max_length * causal
        mixed[..., head * lin:(head + 1) * lin] = a @ v[..., head * lin:(head + 1) * lin]
    kernel, offset = (t.numpy() for t in layer.projections[0].weights)
    expected = h + (u * _layer_norm(mixed)) @ kernel + offset
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_position_t_ignores_later_positions():
    assert_position_t_ignores_later_positions(HSTUEncoder(
        max_length=7, num_blocks=2, num_heads=2, linear_dim=4, attention_dim=4, dropout=0.0))


def test_padded_positions_do_not_leak_and_are_zero():
    assert_padded_positions_do_not_leak_and_are_zero(HSTUEncoder(
        max_length=7, num_blocks=2, linear_dim=4, attention_dim=4, dropout=0.0))


def test_trimmed_left_padding_gives_the_same_outputs():
    """Attention is divided by the fixed ``max_length`` and biased by offsets only, so dropping
    shared left padding changes nothing for the valid positions."""
    layer = HSTUEncoder(max_length=9, num_blocks=2, linear_dim=4, attention_dim=4, dropout=0.0)
    x, mask = sequences()
    full = layer(x, mask=mask).numpy()
    rows = [0, 2]  # both start with two padded positions
    trimmed = layer(tf.gather(x, rows)[:, 2:], mask=tf.gather(mask, rows)[:, 2:]).numpy()
    np.testing.assert_allclose(trimmed, full[rows, 2:], atol=1e-5)


def test_config_round_trip():
    layer = HSTUEncoder(max_length=7, num_blocks=3, num_heads=2, linear_dim=5, attention_dim=3,
                        dropout=0.1)
    clone = HSTUEncoder.from_config(layer.get_config())
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.linear_dim,
            clone.attention_dim, clone.dropout) == (7, 3, 2, 5, 3, 0.1)
