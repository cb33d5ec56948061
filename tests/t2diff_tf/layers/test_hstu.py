"""HSTU blocks: the block's closed form, causality, masking, trimming and serialisation."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.hstu import (HSTUEncoder, RelativePositionBias, RelativeTimeBias,
                                   gather_with_dense_gradient)
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


def test_gather_with_dense_gradient_matches_tf_gather():
    """The values are ``table[indices]``; the gradient is the per-row sum of the upstream
    gradient over every index naming that row (repeats included), as ``tf.gather``'s is once
    its sparse entries are summed, and it is dense."""
    rng = np.random.default_rng(1)
    table = tf.Variable(rng.normal(size=[5]).astype(np.float32))
    indices = tf.constant(rng.integers(0, 4, size=[3, 6, 6]))  # row 4 never read
    upstream = tf.constant(rng.normal(size=[3, 6, 6]).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        dense = gather_with_dense_gradient(table, indices)
        sparse = tf.gather(table, indices)
        dense_loss, sparse_loss = tf.reduce_sum(dense * upstream), tf.reduce_sum(sparse * upstream)
    np.testing.assert_array_equal(dense.numpy(), sparse.numpy())
    gradient = tape.gradient(dense_loss, table)
    assert isinstance(gradient, tf.Tensor)
    expected = np.bincount(indices.numpy().ravel(), weights=upstream.numpy().ravel(), minlength=5)
    np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(sparse_loss, table)).numpy(),
                               expected, rtol=1e-5, atol=1e-6)
    assert gradient.numpy()[4] == 0.0


@pytest.mark.parametrize("layer, argument", [
    (RelativePositionBias(max_length=6), tf.constant(4)),
    (RelativeTimeBias(num_buckets=3), tf.constant([[[0, 2], [1, 1]]]))])
def test_bias_tables_get_dense_gradients(layer, argument):
    """Neither bias table hands the optimizer one sparse entry per read."""
    layer.build()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(argument))
    (gradient,) = tape.gradient(loss, layer.trainable_variables)
    assert not isinstance(gradient, tf.IndexedSlices)


@pytest.mark.parametrize("normalization, time_buckets, residual, origin, relative", [
    ("max_length", 0, "input", "first", True), ("visible_keys", 0, "input", "first", True),
    ("max_length", 6, "input", "first", True), ("max_length", 0, "normalized_input", "first", True),
    # The TensorFlow reimplementation's recipe: time bias only, positions from the newest.
    ("visible_keys", 6, "normalized_input", "last", False)])
def test_one_block_matches_its_closed_form(normalization, time_buckets, residual, origin,
                                           relative):
    """One block, two heads, all valid: the numpy formula of the module docstring; query ``i``
    sees ``i + 1`` behaviours; the time bias adds ``w_time[bucket[b, i, j]]``; the branch is
    added to ``x`` or to ``LN(x)``; the positional embeddings are the table's first or last
    ``L`` rows; without the relative bias only the time bias (if any) is added."""
    tf.keras.utils.set_random_seed(0)
    length, dim, heads, lin, att, max_length = 5, 6, 2, 3, 2, 9
    layer = HSTUEncoder(max_length, num_blocks=1, num_heads=heads, linear_dim=lin,
                        attention_dim=att, dropout=0.0, attention_normalization=normalization,
                        num_time_buckets=time_buckets, residual=residual,
                        position_origin=origin, relative_position_bias=relative)
    rng = np.random.default_rng(0)
    x = rng.normal(size=[2, length, dim]).astype(np.float32)
    mask = np.ones([2, length], bool)
    buckets = rng.integers(0, max(time_buckets, 1), size=[2, length, length])
    out = layer(tf.constant(x), mask=tf.constant(mask),
                time_buckets=tf.constant(buckets) if time_buckets else None).numpy()

    positions = layer.positions.numpy()
    h = x + (positions[:length] if origin == "first" else positions[-length:])
    uvqk = _silu(_layer_norm(h) @ layer.uvqk[0].numpy())
    u, v = uvqk[..., :heads * lin], uvqk[..., heads * lin:2 * heads * lin]
    q, k = uvqk[..., 2 * heads * lin:2 * heads * lin + heads * att], uvqk[..., -heads * att:]
    bias = np.zeros([length, length])
    if relative:
        w = layer.biases[0].offsets.numpy()
        bias = np.array([[w[j - i + max_length - 1] for j in range(length)]
                         for i in range(length)])
    else:
        assert not layer.biases
    if time_buckets:
        layer.time_biases[0].buckets.assign(rng.normal(size=[time_buckets]).astype(np.float32))
        out = layer(tf.constant(x), mask=tf.constant(mask), time_buckets=tf.constant(buckets))
        out = out.numpy()
        bias = bias + layer.time_biases[0].buckets.numpy()[buckets]  # [2, L, L]
    bias = np.broadcast_to(bias, [2, length, length])
    causal = np.tril(np.ones([length, length]))
    divisor = (max_length if normalization == "max_length"
               else np.arange(1, length + 1, dtype=np.float32)[:, None])
    mixed = np.zeros([2, length, heads * lin], np.float32)
    for head in range(heads):
        qh, kh = q[..., head * att:(head + 1) * att], k[..., head * att:(head + 1) * att]
        a = _silu(qh @ kh.transpose(0, 2, 1) + bias) / divisor * causal
        mixed[..., head * lin:(head + 1) * lin] = a @ v[..., head * lin:(head + 1) * lin]
    kernel, offset = (t.numpy() for t in layer.projections[0].weights)
    base = h if residual == "input" else _layer_norm(h)
    expected = base + (u * _layer_norm(mixed)) @ kernel + offset
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_position_t_ignores_later_positions():
    assert_position_t_ignores_later_positions(HSTUEncoder(
        max_length=7, num_blocks=2, num_heads=2, linear_dim=4, attention_dim=4, dropout=0.0))


def test_padded_positions_do_not_leak_and_are_zero():
    assert_padded_positions_do_not_leak_and_are_zero(HSTUEncoder(
        max_length=7, num_blocks=2, linear_dim=4, attention_dim=4, dropout=0.0))


def test_visible_keys_divides_by_the_behaviours_each_query_sees():
    """With padding: a query's divisor counts its valid keys only, so a sequence's outputs do
    not depend on how much left padding it has (the one-row case: trimming a row's own
    padding)."""
    layer = HSTUEncoder(max_length=9, num_blocks=2, linear_dim=4, attention_dim=4, dropout=0.0,
                        attention_normalization="visible_keys")
    x, mask = sequences()
    full = layer(x, mask=mask).numpy()
    alone = layer(x[2:, 5:], mask=mask[2:, 5:]).numpy()  # row 2 without its 5 padded positions
    np.testing.assert_allclose(alone[0], full[2, 5:], atol=1e-5)


def test_time_bias_needs_its_buckets_and_ignores_masked_pairs():
    """Buckets of pairs a query may not attend to (later keys, padding) change nothing."""
    layer = HSTUEncoder(max_length=9, num_blocks=2, linear_dim=4, attention_dim=4, dropout=0.0,
                        num_time_buckets=5)
    x, mask = sequences()
    with pytest.raises(ValueError, match="time_buckets"):
        layer(x, mask=mask)
    rng = np.random.default_rng(1)
    buckets = rng.integers(0, 5, size=[3, 7, 7])
    base = layer(x, mask=mask, time_buckets=tf.constant(buckets)).numpy()
    attended = np.tril(np.ones([7, 7], bool))[None] & mask.numpy()[:, None, :]
    other = np.where(attended, buckets, rng.integers(0, 5, size=buckets.shape))
    out = layer(x, mask=mask, time_buckets=tf.constant(other)).numpy()
    np.testing.assert_allclose(out, base, atol=1e-5)
    changed = np.where(attended, (buckets + 1) % 5, buckets)
    assert not np.allclose(layer(x, mask=mask, time_buckets=tf.constant(changed)).numpy(), base)


def test_normalization_must_be_known():
    with pytest.raises(ValueError, match="attention_normalization"):
        HSTUEncoder(max_length=9, attention_normalization="softmax")


@pytest.mark.parametrize("normalization, origin", [
    ("max_length", "first"), ("visible_keys", "first"), ("visible_keys", "last")])
def test_trimmed_left_padding_gives_the_same_outputs(normalization, origin):
    """Attention is divided by a count that padding does not change and biased by offsets
    only, and positions count from the oldest or the newest behaviour, so dropping shared left
    padding changes nothing for the valid positions."""
    layer = HSTUEncoder(max_length=9, num_blocks=2, linear_dim=4, attention_dim=4, dropout=0.0,
                        attention_normalization=normalization, position_origin=origin)
    x, mask = sequences()
    full = layer(x, mask=mask).numpy()
    rows = [0, 2]  # both start with two padded positions
    trimmed = layer(tf.gather(x, rows)[:, 2:], mask=tf.gather(mask, rows)[:, 2:]).numpy()
    np.testing.assert_allclose(trimmed, full[rows, 2:], atol=1e-5)


def test_config_round_trip():
    layer = HSTUEncoder(max_length=7, num_blocks=3, num_heads=2, linear_dim=5, attention_dim=3,
                        dropout=0.1, attention_normalization="visible_keys", num_time_buckets=4,
                        residual="normalized_input", position_origin="last",
                        relative_position_bias=False)
    clone = HSTUEncoder.from_config(layer.get_config())
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.linear_dim,
            clone.attention_dim, clone.dropout, clone.attention_normalization,
            clone.num_time_buckets, clone.residual, clone.position_origin,
            clone.relative_position_bias) == (7, 3, 2, 5, 3, 0.1, "visible_keys", 4,
                                              "normalized_input", "last", False)


def test_residual_must_be_known():
    with pytest.raises(ValueError, match="residual must be one of"):
        HSTUEncoder(max_length=7, residual="output")


def test_position_origin_must_be_known():
    with pytest.raises(ValueError, match="position_origin must be one of"):
        HSTUEncoder(max_length=7, position_origin="middle")


def test_without_the_relative_bias_the_offsets_play_no_part():
    """The same weights with and without the relative bias differ exactly by that bias: with
    its tables at zero the two encoders agree, and the encoder without it has none to train."""
    x, mask = sequences()
    kwargs = dict(max_length=9, num_blocks=2, linear_dim=4, attention_dim=4, dropout=0.0)
    tf.keras.utils.set_random_seed(3)
    plain = HSTUEncoder(relative_position_bias=False, **kwargs)
    tf.keras.utils.set_random_seed(3)
    biased = HSTUEncoder(**kwargs)
    plain(x, mask=mask), biased(x, mask=mask)
    assert not any("relative_bias" in v.name for v in plain.trainable_variables)
    others = [v for v in biased.trainable_variables if "relative_bias" not in v.name]
    assert len(others) == len(plain.trainable_variables)
    for mine, theirs in zip(others, plain.trainable_variables):  # both in creation order
        mine.assign(theirs)
    for variable in biased.trainable_variables:
        if "relative_bias" in variable.name:
            variable.assign(tf.zeros_like(variable))
    np.testing.assert_allclose(plain(x, mask=mask).numpy(), biased(x, mask=mask).numpy(),
                               atol=1e-6)
