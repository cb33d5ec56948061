"""Caser: the convolutions and the loss in closed form, masking, and an order it learns."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.caser import Caser, CaserConfig, CaserConvolutions
from tests.t2diff_tf.models.reference import two_windows

SPEC = F.ExampleSpec(history_length=6)


def _batch():
    return two_windows([[0, 0, 0, 0, 3, 5], [1, 2, 3, 4, 5, 6]])


def _model(**overrides):
    config = CaserConfig(**{"embedding_dim": 8, "sequence_length": 3, "dropout": 0.0,
                            **overrides})
    return Caser(config, num_items=10, example_spec=SPEC)


def test_convolutions_match_the_closed_form():
    length, dim, n_h, n_v = 4, 5, 3, 2
    layer = CaserConvolutions(length, n_h, n_v)
    x = np.random.default_rng(0).normal(size=(2, length, dim)).astype(np.float32)
    out = layer(tf.constant(x)).numpy()
    expected = []
    for b in range(2):
        features = []
        for height, conv in zip(range(1, length + 1), layer.horizontal):
            kernel, bias = (w.numpy() for w in conv.weights)  # [h, d, n_h], [n_h]
            windows = [np.einsum("hd,hdk->k", x[b, i:i + height], kernel) + bias
                       for i in range(length - height + 1)]
            features.append(np.maximum(np.stack(windows), 0.0).max(axis=0))
        vertical = layer.vertical_kernel.numpy().T @ x[b] + layer.vertical_bias.numpy()[:, None]
        features.append(vertical.reshape(-1))  # [n_v, d], filter-major
        expected.append(np.concatenate(features))
    assert out.shape == (2, length * n_h + n_v * dim)
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-5, atol=1e-5)


def test_convolutions_config_round_trip():
    layer = CaserConvolutions(4, 3, 2, activation="tanh")
    clone = CaserConvolutions.from_config(layer.get_config())
    assert (clone.sequence_length, clone.num_horizontal_filters, clone.num_vertical_filters,
            clone.activation) == (4, 3, 2, "tanh")


def test_user_embedding_is_the_dense_layer_over_the_convolutions():
    model = _model()
    features = _batch()
    e_u = model.query_embeddings(features).numpy()
    image = model.sequence_image(features[F.HISTORY]).numpy()
    assert image.shape == (2, 3, 8)
    np.testing.assert_array_equal(image[0, 0], 0.0)  # the padded row is zero
    kernel, bias = (w.numpy() for w in model.user_dense.weights)
    convolved = model.convolutions(tf.constant(image)).numpy()
    np.testing.assert_allclose(e_u, np.maximum(convolved @ kernel + bias, 0.0), atol=1e-6)


def test_loss_is_the_full_softmax_over_the_corpus():
    model = _model()
    features = _batch()
    loss = float(model.compute_loss(features, training=False))
    e_u = model.query_embeddings(features).numpy()
    corpus = model.corpus_embeddings().numpy()
    losses = []
    for b, target in enumerate(features[F.TARGET].numpy()):
        logits = corpus @ e_u[b]
        logits = logits - logits.max()
        losses.append(np.log(np.exp(logits).sum()) - logits[target - 1])
    assert loss == pytest.approx(np.mean(losses), rel=1e-4)


def test_only_the_last_behaviours_matter_and_padding_changes_nothing():
    model = _model()
    features = _batch()
    e_u = model.query_embeddings(features).numpy()
    # Older behaviours than the last L = 3, the target, and the padding's side features.
    history = features[F.HISTORY].numpy().copy()
    history[1, :3] = [9, 9, 9]
    other = dict(features, **{F.HISTORY: tf.constant(history),
                              F.TARGET: tf.constant([1, 1], tf.int64),
                              F.HISTORY_TIME_LAG: tf.constant(np.full((2, 6), 7, np.int64))})
    np.testing.assert_allclose(model.query_embeddings(other).numpy(), e_u, atol=1e-6)
    # The padding id's embedding row.
    table = model.items.id_embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[0]], [tf.fill([8], 5.0)]))
    np.testing.assert_allclose(model.query_embeddings(features).numpy(), e_u, atol=1e-6)
    # A change inside the last L does change e_u.
    history = features[F.HISTORY].numpy().copy()
    history[1, -2] = 9
    changed = model.query_embeddings(dict(features, **{F.HISTORY: tf.constant(history)}))
    assert not np.allclose(changed.numpy()[1], e_u[1])


def test_config_validation_and_round_trip():
    config = CaserConfig.from_dict({"sequence_length": 4, "item_tower_units": [16],
                                    "loss": {"kind": "full_softmax", "temperature": 0.5}})
    assert config.item_tower_units == (16,)
    assert CaserConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        CaserConfig(num_vertical_filters=0)
    with pytest.raises(ValueError):
        CaserConfig(dense_activation="not_an_activation")
    with pytest.raises(ValueError, match="history length"):
        Caser(CaserConfig(sequence_length=7), num_items=10, example_spec=SPEC)


def test_caser_learns_an_order_a_bag_cannot_see(order_task):
    """Sequences a->b->c and c->b->a hold the same items; only order tells the next item."""
    model = Caser(CaserConfig(embedding_dim=16, sequence_length=3, dropout=0.0), num_items=6,
                  example_spec=SPEC)
    order_task().assert_learned(model, learning_rate=0.02, epochs=10)
