"""Session encoder and DIN target attention: masking, pooling, serialisation."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.attention import (SessionEncoder, TargetAttention, masked_mean,
                                        masked_softmax)

MASK = tf.constant([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]]) > 0


def _garbage_at_padding(x, mask):
    return tf.where(mask[:, :, None], x, 50.0 * tf.random.normal(tf.shape(x)))


def test_masked_softmax_gives_padding_exactly_zero():
    logits = tf.random.normal([3, 6])
    w = masked_softmax(logits, MASK).numpy()
    assert np.all(w[~MASK.numpy()] == 0.0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    expected = tf.nn.softmax(logits[0, 2:]).numpy()
    np.testing.assert_allclose(w[0, 2:], expected, rtol=1e-5)
    empty = masked_softmax(logits[:1], tf.zeros([1, 6], tf.bool)).numpy()
    assert np.all(empty == 0.0)


def test_masked_mean():
    x = tf.random.normal([3, 6, 4])
    got = masked_mean(x, MASK).numpy()
    np.testing.assert_allclose(got[0], x.numpy()[0, 2:].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(got[1], x.numpy()[1, 5], rtol=1e-5)
    assert np.all(masked_mean(x, tf.zeros([3, 6], tf.bool)).numpy() == 0.0)


def test_session_encoder_ignores_padding():
    encoder = SessionEncoder(num_layers=2, num_heads=2, dropout=0.1, max_positions=8)
    x = tf.random.normal([3, 6, 8])
    base = encoder(x, mask=MASK).numpy()
    assert base.shape == (3, 8)
    changed = encoder(_garbage_at_padding(x, MASK), mask=MASK).numpy()
    np.testing.assert_allclose(changed, base, rtol=1e-5, atol=1e-5)
    # The change is visible without the mask: the check above can fail.
    unmasked = encoder(_garbage_at_padding(x, MASK)).numpy()
    assert np.abs(unmasked[:2] - base[:2]).max() > 1e-3


def test_session_encoder_positions_are_right_aligned():
    """Left padding must not change what the valid suffix encodes."""
    encoder = SessionEncoder(num_layers=1, num_heads=2, dropout=0.0, max_positions=8)
    x = tf.random.normal([1, 3, 8])
    short = encoder(x).numpy()
    padded = encoder(tf.concat([tf.zeros([1, 2, 8]), x], axis=1),
                     mask=tf.constant([[0, 0, 1, 1, 1]]) > 0).numpy()
    np.testing.assert_allclose(padded, short, rtol=1e-5, atol=1e-6)
    # Order matters (positions are used).
    reversed_ = encoder(x[:, ::-1]).numpy()
    assert np.abs(reversed_ - short).max() > 1e-4


def test_session_encoder_dropout_only_in_training():
    encoder = SessionEncoder(dropout=0.5, max_positions=8)
    x = tf.random.normal([2, 6, 8])
    np.testing.assert_array_equal(encoder(x, mask=MASK[:2]).numpy(),
                                  encoder(x, mask=MASK[:2]).numpy())
    assert np.abs(encoder(x, mask=MASK[:2], training=True).numpy()
                  - encoder(x, mask=MASK[:2]).numpy()).max() > 1e-4


def test_target_attention_ignores_padding_and_weights_sum_to_one():
    attention = TargetAttention(hidden_units=(16, 8), num_time_lag_buckets=5, time_lag_dim=3)
    x, query = tf.random.normal([3, 6, 4]), tf.random.normal([3, 4])
    lag = tf.constant(np.random.default_rng(0).integers(0, 5, size=(3, 6)))
    pooled, weights = attention(x, query, mask=MASK, time_lag=lag, return_weights=True)
    w = weights.numpy()
    assert np.all(w[~MASK.numpy()] == 0.0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(pooled.numpy(), np.einsum("bn,bnd->bd", w, x.numpy()),
                               rtol=1e-5, atol=1e-6)
    garbage_lag = tf.where(MASK, lag, 4 - lag)
    changed = attention(_garbage_at_padding(x, MASK), query, mask=MASK, time_lag=garbage_lag)
    np.testing.assert_allclose(changed.numpy(), pooled.numpy(), rtol=1e-5, atol=1e-6)
    # Padding with inf / nan stays out too.
    poisoned = tf.where(MASK[:, :, None], x, np.inf)
    assert np.all(np.isfinite(attention(poisoned, query, mask=MASK, time_lag=lag).numpy()))
    # Query and time lag both move the weights.
    _, w2 = attention(x, -query, mask=MASK, time_lag=lag, return_weights=True)
    _, w3 = attention(x, query, mask=MASK, time_lag=(lag + 1) % 5, return_weights=True)
    assert np.abs(w2.numpy() - w).max() > 1e-4 and np.abs(w3.numpy() - w).max() > 1e-4


def test_target_attention_without_valid_history_is_zero():
    attention = TargetAttention(hidden_units=(8,))
    out = attention(tf.random.normal([2, 4, 3]), tf.random.normal([2, 3]),
                    mask=tf.zeros([2, 4], tf.bool))
    assert np.all(out.numpy() == 0.0)


def test_target_attention_requires_time_lag_when_configured():
    attention = TargetAttention(num_time_lag_buckets=4)
    with pytest.raises(ValueError, match="time_lag"):
        attention(tf.random.normal([1, 2, 3]), tf.random.normal([1, 3]))


@pytest.mark.parametrize("layer,args", [
    (SessionEncoder(num_layers=2, num_heads=2, dropout=0.0, max_positions=8), ()),
    (TargetAttention(hidden_units=(8, 4), num_time_lag_buckets=5), ("query", "lag")),
])
def test_get_config_round_trip(layer, args):
    x = tf.random.normal([3, 6, 4])
    extra = {"query": tf.random.normal([3, 4]), "lag": tf.ones([3, 6], tf.int64)}
    kwargs = {"time_lag": extra["lag"]} if "lag" in args else {}
    positional = [extra["query"]] if "query" in args else []
    out = layer(x, *positional, mask=MASK, **kwargs).numpy()
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    clone(x, *positional, mask=MASK, **kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x, *positional, mask=MASK, **kwargs).numpy(), out,
                               rtol=1e-5, atol=1e-6)
