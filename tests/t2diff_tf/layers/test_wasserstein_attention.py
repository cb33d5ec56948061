"""Wasserstein attention (STOSA's layer): the squared 2-Wasserstein distance, attention scores,
weights and outputs in closed form, and serialisation."""

import numpy as np
import tensorflow as tf

from t2diff_tf.layers.wasserstein_attention import (StochasticTransformer, WassersteinAttention,
                                                    pairwise_squared_wasserstein,
                                                    squared_wasserstein)
from tests.t2diff_tf.layers.initial_weights import assert_random_weights_start_apart
from tests.t2diff_tf.models.reference import squared_wasserstein_numpy as _w2


def _elu1(x):
    return np.where(x > 0, x, np.expm1(x)) + 1.0


def test_pairwise_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 4, 5))
    c1, c2 = rng.uniform(0.1, 2.0, size=(2, 3, 5)), rng.uniform(0.1, 2.0, size=(2, 4, 5))
    expected = _w2(m1[:, :, None], c1[:, :, None], m2[:, None], c2[:, None])  # [2, 3, 4]
    as_f32 = [tf.constant(x, tf.float32) for x in (m1, c1, m2, c2)]
    np.testing.assert_allclose(pairwise_squared_wasserstein(*as_f32).numpy(), expected,
                               rtol=1e-4, atol=1e-4)
    pointwise = squared_wasserstein(*[tf.constant(x[:, :3], tf.float32)
                                      for x in (m1, c1, m2, c2)]).numpy()
    np.testing.assert_allclose(pointwise, _w2(m1, c1, m2[:, :3], c2[:, :3]), rtol=1e-5)


def test_attention_scores_weights_and_outputs_match_numpy():
    batch, length, dim, heads = 2, 4, 6, 2
    head = dim // heads
    layer = WassersteinAttention(num_heads=heads)
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(batch, length, dim)).astype(np.float32)
    cov = rng.normal(size=(batch, length, dim)).astype(np.float32)
    allowed = np.tril(np.ones((length, length), bool))[None].repeat(batch, 0)
    allowed[0, :, 0] = False
    allowed[0, 0, 0] = True  # every row keeps at least one key
    out_mean, out_cov, scores, weights = layer(tf.constant(mean), tf.constant(cov),
                                               tf.constant(allowed), return_scores=True)

    def dense(name, x):
        kernel, bias = (w.numpy() for w in getattr(layer, name).weights)
        return x @ kernel + bias

    def split(x):  # [b, L, h * dh] -> [b, h, L, dh]
        return x.reshape(batch, length, heads, head).transpose(0, 2, 1, 3)

    qm, km, vm = (split(dense(f"mean_{n}", mean)) for n in ("query", "key", "value"))
    qc, kc, vc = (split(_elu1(dense(f"covariance_{n}", cov))) for n in ("query", "key", "value"))
    expected_scores = -_w2(qm[:, :, :, None], qc[:, :, :, None],
                           km[:, :, None], kc[:, :, None]) / np.sqrt(head)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-4, atol=1e-4)
    logits = np.where(allowed[:, None], expected_scores, -np.inf)
    expected_weights = np.exp(logits - logits.max(-1, keepdims=True))
    expected_weights /= expected_weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-4, atol=1e-6)
    assert np.all(weights.numpy()[~np.broadcast_to(allowed[:, None], weights.shape)] == 0.0)

    def merge(x):  # [b, h, L, dh] -> [b, L, h * dh]
        return x.transpose(0, 2, 1, 3).reshape(batch, length, dim)

    np.testing.assert_allclose(
        out_mean.numpy(), dense("mean_output", merge(expected_weights @ vm)), rtol=1e-4,
        atol=1e-4)
    # Covariance of a weighted sum of independent Gaussians: squared weights.
    np.testing.assert_allclose(
        out_cov.numpy(), dense("covariance_output", merge(expected_weights ** 2 @ vc)),
        rtol=1e-4, atol=1e-4)


def test_layers_config_round_trip():
    attention = WassersteinAttention(num_heads=4, dropout=0.1, name="w")
    clone = WassersteinAttention.from_config(attention.get_config())
    assert (clone.num_heads, clone.dropout, clone.name) == (4, 0.1, "w")
    encoder = StochasticTransformer(7, num_blocks=3, num_heads=2, dropout=0.3,
                                    attention_dropout=0.1, activation="relu")
    clone = StochasticTransformer.from_config(encoder.get_config())
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.dropout,
            clone.attention_dropout, clone.activation) == (7, 3, 2, 0.3, 0.1, "relu")


def test_no_two_weights_start_equal():
    encoder = StochasticTransformer(7, num_blocks=2, num_heads=2)
    x = tf.random.normal([2, 7, 8], seed=1)
    encoder(x, x, mask=tf.ones([2, 7], tf.bool))
    assert_random_weights_start_apart(encoder)
