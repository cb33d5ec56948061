"""STOSA: Wasserstein attention and scores in closed form, masking, causality, loss, an order."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.wasserstein_attention import (StochasticTransformer, WassersteinAttention,
                                                    pairwise_squared_wasserstein,
                                                    squared_wasserstein)
from t2diff_tf.models.stosa import STOSA, STOSAConfig
from tests.t2diff_tf.models.reference import two_windows

SPEC = F.ExampleSpec(history_length=6)



def _model(**overrides):
    config = STOSAConfig(**{"embedding_dim": 8, "num_heads": 2, "dropout": 0.0, **overrides})
    return STOSA(config, num_items=10, example_spec=SPEC)


def _w2(mean1, cov1, mean2, cov2):
    """Squared 2-Wasserstein distance between diagonal Gaussians (numpy, broadcast)."""
    return (((mean1 - mean2) ** 2).sum(-1)
            + ((np.sqrt(cov1) - np.sqrt(cov2)) ** 2).sum(-1))


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


def test_inner_product_scores_are_the_negative_wasserstein_distance():
    model = _model()
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    corpus = model.corpus_embeddings().numpy()
    assert e_u.shape == (2, 17) and corpus.shape == (10, 17)
    mean, cov = (x.numpy() for x in model.user_gaussian(features))
    item_mean, item_cov = (x.numpy() for x in model.item_gaussians(model.corpus_ids()))
    assert np.all(cov > 0) and np.all(item_cov > 0)
    distance = _w2(mean[:, None], cov[:, None], item_mean[None], item_cov[None])  # [2, 10]
    scores = e_u @ corpus.T
    # <e_u, e_i> = -W2^2(u, i) + ||mu_u||^2 + ||Sigma_u^(1/2)||^2.
    user_term = (mean ** 2).sum(-1) + cov.sum(-1)
    np.testing.assert_allclose(scores, -distance + user_term[:, None], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1), np.argsort(distance, axis=1))
    # The registry's retrieval path (TFRS brute force over the corpus vectors) ranks by W2 too.
    _, top_ids = model.brute_force_index(k=10)(features)
    np.testing.assert_array_equal(top_ids.numpy(), np.argsort(distance, axis=1) + 1)


def test_target_is_never_an_input_and_the_user_is_the_last_position():
    model = _model()
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    states = model._states(features[F.HISTORY], training=False).numpy()
    np.testing.assert_allclose(e_u, states[:, -1], atol=1e-6)
    other = dict(features, **{F.TARGET: tf.constant([1, 1], tf.int64)})
    np.testing.assert_allclose(model.query_embeddings(other).numpy(), e_u, atol=1e-6)


def test_position_t_ignores_later_behaviours():
    model = _model()
    history = tf.constant([[1, 2, 3, 4, 5, 6]], tf.int64)
    changed = tf.constant([[1, 2, 3, 9, 8, 7]], tf.int64)
    base = [x.numpy() for x in model.sequence_gaussians(history)]
    out = [x.numpy() for x in model.sequence_gaussians(changed)]
    for b, o in zip(base, out):
        np.testing.assert_allclose(o[:, :3], b[:, :3], atol=1e-5)
        assert not np.allclose(o[:, 3:], b[:, 3:])


def test_left_padding_and_the_padding_embedding_change_nothing():
    model = _model()
    padded = model.query_embeddings({F.HISTORY: tf.constant([[0, 0, 3, 5, 2, 7]], tf.int64)})
    # The same behaviours without the padding (a shorter window): positions are right-aligned.
    short = model.query_embeddings({F.HISTORY: tf.constant([[3, 5, 2, 7]], tf.int64)})
    np.testing.assert_allclose(short.numpy(), padded.numpy(), atol=1e-5)
    # The padding rows of both embedding tables are never read.
    for table in (model.items.id_embeddings, model.covariances.id_embeddings):
        table.assign(tf.tensor_scatter_nd_update(table, [[0]], 50.0 * tf.ones([1, 8])))
    again = model.query_embeddings({F.HISTORY: tf.constant([[0, 0, 3, 5, 2, 7]], tf.int64)})
    np.testing.assert_allclose(again.numpy(), padded.numpy(), atol=1e-5)


def test_negatives_are_uniform_items_other_than_the_positive():
    model = _model()
    positives = tf.constant(np.repeat(np.arange(1, 11), 200), tf.int64)
    negatives = model.sample_negatives(positives).numpy()
    assert negatives.min() >= 1 and negatives.max() <= 10
    assert np.all(negatives != positives.numpy())
    assert len(np.unique(negatives[positives.numpy() == 4])) == 9


@pytest.mark.parametrize("pvn_weight", [0.0, 0.5])
def test_loss_is_the_softmax_over_negative_distances_plus_the_pvn_term(pvn_weight):
    model = _model(pvn_weight=pvn_weight)
    model.sample_negatives = lambda positives: positives % 10 + 1  # deterministic negatives
    features = two_windows()
    loss = float(model.compute_loss(features, training=False))
    mean, cov = (x.numpy() for x in model.sequence_gaussians(features[F.HISTORY]))
    item_mean, item_cov = (x.numpy() for x in model.item_gaussians(model.corpus_ids()))
    history = features[F.HISTORY].numpy()
    labels = np.concatenate([history[:, 1:], features[F.TARGET].numpy()[:, None]], axis=1)
    softmax, hinge = [], []
    for b in range(2):
        for t in range(6):
            if history[b, t] == 0:
                continue
            logits = -_w2(mean[b, t], cov[b, t], item_mean, item_cov)
            logits = logits - logits.max()
            positive = labels[b, t] - 1
            softmax.append(np.log(np.exp(logits).sum()) - logits[positive])
            negative = (positive + 1) % 10
            hinge.append(max(0.0, _w2(mean[b, t], cov[b, t], item_mean[positive],
                                      item_cov[positive])
                             - _w2(item_mean[positive], item_cov[positive],
                                   item_mean[negative], item_cov[negative])))
    assert len(softmax) == 10
    assert np.mean(hinge) > 0  # the regulariser is active at initialisation
    assert loss == pytest.approx(np.mean(softmax) + pvn_weight * np.mean(hinge), rel=1e-4)
    assert float(model.auxiliary_loss_tracker.result()) == pytest.approx(
        pvn_weight * np.mean(hinge), rel=1e-4, abs=1e-7)


def test_target_only_loss_uses_the_user_gaussian():
    model = _model(all_positions=False, pvn_weight=0.0)
    features = two_windows()
    loss = float(model.compute_loss(features, training=False))
    mean, cov = (x.numpy() for x in model.user_gaussian(features))
    item_mean, item_cov = (x.numpy() for x in model.item_gaussians(model.corpus_ids()))
    logits = -_w2(mean[:, None], cov[:, None], item_mean[None], item_cov[None])  # [2, 10]
    logits = logits - logits.max(axis=1, keepdims=True)
    targets = features[F.TARGET].numpy() - 1
    expected = np.log(np.exp(logits).sum(axis=1)) - logits[[0, 1], targets]
    assert loss == pytest.approx(expected.mean(), rel=1e-4)


def test_config_validation_and_round_trip():
    config = STOSAConfig(embedding_dim=8, num_heads=2, pvn_weight=0.1)
    assert STOSAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        STOSAConfig(embedding_dim=6, num_heads=4)
    with pytest.raises(ValueError):
        STOSAConfig(pvn_weight=-1.0)
    with pytest.raises(ValueError):
        STOSA(STOSAConfig(embedding_dim=8), num_items=1, example_spec=SPEC)


def test_stosa_learns_an_order_a_bag_cannot_see(order_task):
    """Sequences a->b->c and c->b->a hold the same items; only order tells the next item."""
    model = STOSA(STOSAConfig(embedding_dim=16, num_blocks=1, dropout=0.0), num_items=6,
                  example_spec=SPEC)
    order_task().assert_learned(model, learning_rate=0.02, epochs=8)
