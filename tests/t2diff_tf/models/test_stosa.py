"""STOSA: Wasserstein scores in closed form, masking, causality, loss, an order (the attention
layer: tests/t2diff_tf/layers/test_wasserstein_attention.py)."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.stosa import STOSA, STOSAConfig
from tests.t2diff_tf.models.reference import squared_wasserstein_numpy as _w2, two_windows

SPEC = F.ExampleSpec(history_length=6)


def _model(**overrides):
    config = STOSAConfig(**{"embedding_dim": 8, "num_heads": 2, "dropout": 0.0, **overrides})
    return STOSA(config, num_items=10, example_spec=SPEC)


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
