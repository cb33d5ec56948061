"""Mamba4Rec: the config, the all-position loss, the last-state user embedding, and an order it
learns that a bag cannot see (the Mamba layers: tests/t2diff_tf/layers/test_mamba.py)."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.models.mamba4rec import Mamba4Rec, Mamba4RecConfig
from tests.t2diff_tf.models.reference import next_item_softmax_loss, two_windows

SPEC = F.ExampleSpec(history_length=6)


def test_config_dict_round_trip_and_validation():
    config = Mamba4RecConfig(embedding_dim=16, num_blocks=2, scan="sequential")
    assert Mamba4RecConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        Mamba4RecConfig(scan="fft")
    with pytest.raises(ValueError):
        Mamba4RecConfig(dropout=1.0)
    with pytest.raises(ValueError):
        Mamba4RecConfig(state_dim=0)


def _model(**overrides):
    config = Mamba4RecConfig(**{"embedding_dim": 8, "state_dim": 4, "dropout": 0.0,
                                **overrides})
    return Mamba4Rec(config, num_items=10, example_spec=SPEC)



@pytest.mark.parametrize("scan", ["parallel", "sequential"])
def test_loss_is_the_mean_softmax_over_every_valid_position(scan):
    model = _model(num_blocks=2, scan=scan)
    features = two_windows()
    loss = float(model.compute_loss(features, training=False))
    states = model._states(features[F.HISTORY], training=False).numpy()
    assert loss == pytest.approx(
        next_item_softmax_loss(states, model.corpus_embeddings().numpy(), features), rel=1e-4)


def test_user_embedding_is_the_last_state_and_ignores_padding_and_target():
    model = _model()
    features = two_windows()
    e_u = model.query_embeddings(features).numpy()
    states = model._states(features[F.HISTORY], training=False).numpy()
    np.testing.assert_allclose(e_u, states[:, -1], atol=1e-6)
    other = dict(features, **{F.TARGET: tf.constant([1, 1], tf.int64)})
    np.testing.assert_allclose(model.query_embeddings(other).numpy(), e_u, atol=1e-6)
    # More or less left padding changes nothing (no positional embedding).
    for history in ([[3, 5, 2, 7]], [[0, 0, 0, 0, 0, 3, 5, 2, 7]]):
        padded = model._states(tf.constant(history, tf.int64), training=False).numpy()
        np.testing.assert_allclose(padded[0, -4:], states[0, -4:], atol=1e-5)
    # Causal: changing a later behaviour leaves the earlier states unchanged.
    changed = model._states(tf.constant([[0, 0, 3, 5, 9, 9]], tf.int64), training=False).numpy()
    np.testing.assert_allclose(changed[0, :4], states[0, :4], atol=1e-6)
    assert np.abs(changed[0, 4:] - states[0, 4:]).max() > 0.01


def test_mamba4rec_learns_an_order_a_bag_cannot_see(order_task):
    """1->2->3 and 2->1->3 hold the same items and end alike; only order tells the next item."""
    model = Mamba4Rec(Mamba4RecConfig(embedding_dim=16, state_dim=8, dropout=0.0),
                      num_items=6, example_spec=SPEC)
    task = order_task(second=(2, 1, 3))
    task.assert_learned(model, learning_rate=0.02, epochs=15,
                        rows=range(len(task.data[F.TARGET])))
